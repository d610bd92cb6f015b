"""Resumable stages: an output is reused when its sidecar ``<output>.meta.json`` holds the key of
the inputs and settings that made it.

The key is a SHA-256 over the stage name, its settings (JSON, sorted keys) and the *content* of
its input files (not their times: copying data around must not redo a stage). The sidecar is
written after the output, both atomically, so a stage killed half-way leaves no sidecar and runs
again next time.
"""

import hashlib
import json
import logging
import os

from dataset_prep.io import write_json

logger = logging.getLogger(__name__)


def file_digest(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(stage, settings, inputs):
    """Hex key of one stage run: ``settings`` a JSON-able dict, ``inputs`` a list of file paths."""
    digest = hashlib.sha256()
    digest.update(stage.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(inputs):
        digest.update(os.path.basename(path).encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def sidecar(output):
    return os.fspath(output) + ".meta.json"


def is_done(outputs, key):
    """True when every output exists and the first one's sidecar holds ``key``."""
    if not all(os.path.isfile(p) for p in outputs):
        return False
    try:
        with open(sidecar(outputs[0]), encoding="utf-8") as f:
            return json.load(f).get("key") == key
    except (OSError, ValueError):
        return False


def mark_done(outputs, key, stage, settings, summary=None):
    """Record that ``outputs`` were made under ``key`` (call after they are written)."""
    write_json(sidecar(outputs[0]), {"stage": stage, "key": key, "settings": settings,
                                     "outputs": [os.fspath(p) for p in outputs], "summary": summary or {}})


def read_summary(output):
    """The summary stored with a finished stage's output ({} if none)."""
    try:
        with open(sidecar(output), encoding="utf-8") as f:
            return json.load(f).get("summary", {})
    except (OSError, ValueError):
        return {}


def run_stage(stage, settings, inputs, outputs, work, force=False):
    """Run ``work()`` (which writes ``outputs`` and returns a summary dict) unless already done.

    Returns (summary, ran): ``ran`` is False when the cached outputs were reused.
    """
    key = stage_key(stage, settings, inputs)
    if not force and is_done(outputs, key):
        logger.info(f"{stage}: up to date, skipped ({outputs[0]}); --force redoes it")
        return read_summary(outputs[0]), False
    summary = work() or {}
    mark_done(outputs, key, stage, settings, summary)
    return summary, True
