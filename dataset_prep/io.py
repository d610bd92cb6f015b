"""Atomic writes and checked reads: a prep stage never leaves half a file, and bad input names its file."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager


class PrepError(Exception):
    """Bad or missing input; the message names the file and what to do."""


@contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Write ``path`` through a temporary file in the same folder, renamed into place on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_copy(source, path):
    """Copy ``source`` to ``path`` through :func:`atomic_write`: readers see the old file or the whole new one."""
    with open(source, "rb") as src, atomic_write(path, "wb") as f:
        shutil.copyfileobj(src, f)


def read_json(path, what):
    """Load a JSON file; a missing or malformed one raises :class:`PrepError` naming it."""
    if not os.path.isfile(path):
        raise PrepError(f"{what} not found: {path}. Check the --source folder (see data/README.md).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PrepError(
            f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
            f"Re-download or regenerate that file."
        ) from None


def write_json(path, obj):
    with atomic_write(path) as f:
        json.dump(obj, f)
