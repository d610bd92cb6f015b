"""Processed source files (``X.inter.json`` + code / text JSON) -> RecBole atomic files.

Writes ``<data_path>/<Name>/<Name>.inter`` (``user_id:token item_id:token timestamp:float``, the
timestamp being the position in the user's chronological list) and ``<Name>.item``
(``item_id:token`` plus a ``token_seq`` field per code modality, ``text_code`` / ``image_code``,
and ``title`` where item text exists). Original integer ids are kept as tokens.

Code files are recognised by content: ``<Name>.index*.json`` whose tokens are lower-case
(``<a_12>``) hold text codes, upper-case (``<A_12>``) image codes.

Collisions (several items with the same code) are never merged: with ``on_collision="suffix"``
(the default, as in TIGER) every item of the modality gets one more level, ``<e_k>`` for text and
``<E_k>`` for image, where ``k`` numbers the items sharing a code in increasing item id (0 for an
item whose code is unique; :func:`dataset_prep.collisions.suffix_ranks`); ``on_collision="error"``
refuses such files. Codes that the quantitative language cannot write (more than ``max_levels``
levels with the collision level, an index of ``codebook_size`` or more, levels out of order) are
refused here, not at training.

A conversion is whole only when its marker ``<Name>.converted.json``, written last, says so; it
records the source files' SHA-256. :func:`ensure_atomic_files` converts again when the marker is
missing (an earlier conversion was killed) or the same source folder's files changed. Conversions
of one folder take turns (a lock file), and each removes the temporary files a killed one left.
"""

import contextlib
import glob
import hashlib
import html
import json
import logging
import os
import re
from collections import Counter

from dataset_prep import code_tokens
from dataset_prep.collisions import collision_groups, item_order, suffix_ranks
from dataset_prep.io import PrepError, atomic_write, read_json, write_json

logger = logging.getLogger(__name__)

MODALITIES = {"text": "text_code", "image": "image_code"}
SOURCE_ENV = "RECBOLE_MQL_SOURCE"
# The quantitative language's size (code_max_levels / codebook_size of the generative models).
CODE_MAX_LEVELS, CODEBOOK_SIZE = 5, 256
MARKER_VERSION = 1
# What the conversion does with items that share a code (``--on_collision``): add a level, or refuse.
ON_COLLISION_CHOICES = ("suffix", "error")
DEFAULT_ON_COLLISION = "suffix"


def parse_code(tokens, item, path):
    """``["<a_1>", "<b_2>", ...]`` -> ``[("a", 1), ("b", 2), ...]``; bad tokens name file and item."""
    parsed = []
    for token in code_tokens.split_tokens(tokens):
        letter_index = code_tokens.parse_token(token)
        if letter_index is None:
            raise PrepError(
                f"{path}: item {item} has a malformed code token {token!r}; expected tokens like '<a_12>'."
            )
        parsed.append(letter_index)
    if not parsed:
        raise PrepError(f"{path}: item {item} has an empty code.")
    return parsed


def code_modality(codes, path):
    """'text' for lower-case level letters, 'image' for upper-case ones."""
    modality = code_tokens.letters_modality({letter for code in codes.values() for letter, _ in code})
    if modality is not None:
        return modality
    raise PrepError(f"{path}: mixes lower- and upper-case code levels; one file must hold one modality.")


def load_code_files(source_dir, name):
    """{modality: (path, {item: [(letter, index), ...]})} for every ``<name>.index*.json``."""
    found = {}
    for path in sorted(glob.glob(os.path.join(source_dir, f"{name}.index*.json"))):
        raw = read_json(path, "Code file")
        if not isinstance(raw, dict):
            raise PrepError(f"{path}: expected an object {{item id: [code tokens]}}.")
        codes = {str(item): parse_code(tokens, item, path) for item, tokens in raw.items()}
        modality = code_modality(codes, path)
        if modality in found:
            raise PrepError(
                f"Two {modality} code files in {source_dir}: {found[modality][0]} and {path}; keep one."
            )
        found[modality] = (path, codes)
    return found


def disambiguate(codes, on_collision, path):
    """Apply ``on_collision`` to {item: [(letter, index), ...]}; returns (codes, number of items that shared a code)."""
    groups = collision_groups(codes)
    n_colliding = sum(len(items) for items in groups.values())
    if not groups:
        return codes, 0
    if on_collision == "error":
        raise PrepError(
            f"{path}: {n_colliding} items share {len(groups)} codes. Regenerate collision-free codes "
            f"(python -m dataset_prep codes ...) or use --on_collision=suffix."
        )
    if on_collision != "suffix":
        raise PrepError(f"Unknown --on_collision rule {on_collision!r}; use one of {', '.join(ON_COLLISION_CHOICES)}.")
    suffix_letter = code_tokens.next_level_letter(next(iter(codes.values()))[-1][0])
    ranks = suffix_ranks(groups)
    return {item: code + [(suffix_letter, ranks.get(item, 0))] for item, code in codes.items()}, n_colliding


def clean_text(value):
    """HTML-unescaped, single-line text; list-looking strings flattened."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    text = html.unescape(str(value))
    text = re.sub(r"<[^>]+>", " ", text)
    if text.startswith("[") and text.endswith("]"):
        text = re.sub(r"^\[|\]$|(?<=[\[,\s])'|'(?=[,\]\s])", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def format_code(code):
    """``[("a", 1), ("b", 2)]`` -> ``"<a_1> <b_2>"`` (a ``token_seq`` field)."""
    return " ".join(code_tokens.letter_token(letter, index) for letter, index in code)


def resolve_source(dataset, source=None):
    """The folder holding ``dataset``'s source files: ``source`` itself, or ``$RECBOLE_MQL_SOURCE/<dataset>``."""
    if source:
        return source
    parent = os.environ.get(SOURCE_ENV)
    if parent and os.path.isdir(os.path.join(parent, dataset)):
        return os.path.join(parent, dataset)
    return None


def check_codes(codes, modality, path, max_levels=CODE_MAX_LEVELS, codebook_size=CODEBOOK_SIZE, suffixed=False):
    """Refuse codes the quantitative language cannot write: levels out of order or of different lengths,
    more than ``max_levels`` levels (the collision level included), an index >= ``codebook_size``
    (``suffixed``: the last level is the collision level the conversion added)."""
    letters = code_tokens.MODALITY_LETTERS[modality]
    lengths = Counter(len(code) for code in codes.values())
    if len(lengths) > 1:
        raise PrepError(f"{path}: {modality} codes have different numbers of levels ({dict(sorted(lengths.items()))} "
                        f"items); every item of a modality needs the same levels. Regenerate the codes.")
    for item, code in codes.items():
        if len(code) > max_levels:
            raise PrepError(
                f"{path}: {modality} codes have {len(code)} levels (item {item}: {format_code(code)}), with the "
                f"collision level; the quantitative language holds {max_levels} (code_max_levels). Regenerate codes "
                f"with fewer levels (or fewer colliding items), or raise code_max_levels.")
        for level, (letter, index) in enumerate(code):
            if letter != letters[level]:
                raise PrepError(f"{path}: item {item} has level {level} written {letter!r}, expected "
                                f"{letters[level]!r} ({format_code(code)}); levels go {letters[:len(code)]} in order.")
            if not 0 <= index < codebook_size:
                last = suffixed and level == len(code) - 1
                crowded = f" (more than {codebook_size} items share one code)" if last else ""
                raise PrepError(
                    f"{path}: item {item} has code index {index} at level {level} ({format_code(code)}); the "
                    f"quantitative language has {codebook_size} codes a level (codebook_size). Regenerate the "
                    f"codes{crowded}, or raise codebook_size.")


def source_files(dataset, source_dir):
    """The files of ``source_dir`` that :func:`convert` reads (interactions, item text, code files)."""
    names = [f"{dataset}.inter.json", f"{dataset}.valid.csv", f"{dataset}.test.csv", f"{dataset}.item.json"]
    files = [os.path.join(source_dir, n) for n in names if os.path.isfile(os.path.join(source_dir, n))]
    return files + sorted(glob.glob(os.path.join(source_dir, f"{dataset}.index*.json")))


def file_hashes(paths, known=None):
    """{file name: {"sha256", "size", "mtime_ns"}}; a file whose size and mtime match ``known`` keeps its hash."""
    out = {}
    for path in paths:
        stat, name = os.stat(path), os.path.basename(path)
        old = (known or {}).get(name) or {}
        if old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns and old.get("sha256"):
            out[name] = old
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[name] = {"sha256": digest.hexdigest(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


def marker_path(dataset, data_path):
    return os.path.join(data_path, dataset, f"{dataset}.converted.json")


def read_marker(dataset, data_path):
    """The completeness marker of ``<data_path>/<dataset>``, or None (missing or unreadable)."""
    try:
        with open(marker_path(dataset, data_path), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("version") == MARKER_VERSION else None


@contextlib.contextmanager
def conversion_lock(dataset, data_path):
    """One conversion of ``<data_path>/<dataset>`` at a time: an advisory lock on
    ``<data_path>/.<dataset>.lock`` (none where fcntl is missing)."""
    os.makedirs(data_path, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(os.path.join(data_path, f".{dataset}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_leftovers(out_dir, dataset):
    """Delete temporary files a killed writer left in ``out_dir`` (``atomic_write``'s ``.<name>.*.tmp``);
    called under :func:`conversion_lock`, so no living conversion is writing them."""
    removed = []
    for path in glob.glob(os.path.join(out_dir, f".{dataset}.*.tmp")):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(os.path.basename(path))
    if removed:
        logger.info(f"{out_dir}: removed {len(removed)} temporary files of an interrupted conversion: {removed}")
    return removed


def convert(dataset, source_dir, data_path="dataset", on_collision=DEFAULT_ON_COLLISION,
            max_levels=CODE_MAX_LEVELS, codebook_size=CODEBOOK_SIZE):
    """Write the atomic files of ``dataset`` from ``source_dir``, then the marker that says they are whole;
    returns a summary dict."""
    with conversion_lock(dataset, data_path):
        return _convert(dataset, source_dir, data_path, on_collision, max_levels, codebook_size)


def _convert(dataset, source_dir, data_path, on_collision, max_levels, codebook_size):
    out_dir = os.path.join(data_path, dataset)
    remove_leftovers(out_dir, dataset)
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker_path(dataset, data_path))  # whatever happens next, the old files are no longer whole
    if not os.path.isdir(source_dir):
        raise PrepError(
            f"Source folder not found: {source_dir}. Pass --source=DIR holding {dataset}.inter.json, "
            f"or set {SOURCE_ENV} to the folder that holds {dataset}/."
        )
    inter_path = os.path.join(source_dir, f"{dataset}.inter.json")
    csv_paths = [os.path.join(source_dir, f"{dataset}.{part}.csv") for part in ("valid", "test")]
    if not os.path.isfile(inter_path) and all(os.path.isfile(p) for p in csv_paths):
        sequences, inter_path = sequences_from_windows(csv_paths), csv_paths[-1]
    else:
        sequences = read_json(inter_path, "Interaction file")
    if not isinstance(sequences, dict):
        raise PrepError(f"{inter_path}: expected an object {{user id: [item ids, oldest first]}}.")
    bad = [user for user, seq in sequences.items() if not isinstance(seq, list)]
    if bad:
        raise PrepError(f"{inter_path}: user {bad[0]}'s value is not a list of item ids ({len(bad)} users so); "
                        f"expected {{user id: [item ids, oldest first]}}.")
    if not any(sequences.values()):
        raise PrepError(f"{inter_path}: no interactions ({len(sequences)} users, every list empty): nothing to "
                        f"train on. Re-download or regenerate that file.")
    repeated = {user: len(seq) - len(set(map(str, seq))) for user, seq in sequences.items()}
    repeated = {user: n for user, n in repeated.items() if n}
    if repeated:
        logger.warning(
            f"{inter_path}: {len(repeated)} of {len(sequences)} users have an item more than once in their list "
            f"({sum(repeated.values())} repeats, e.g. user {next(iter(repeated))}); kept as they are, so a "
            f"validation or test item may already be in that user's history.")
    items_used = sorted({str(i) for seq in sequences.values() for i in seq}, key=item_order)

    item_fields = {}
    summary = {"users": len(sequences), "items": len(items_used),
               "interactions": sum(len(s) for s in sequences.values()),
               "users_with_repeated_items": len(repeated), "repeated_items": sum(repeated.values())}
    for modality, (path, codes) in load_code_files(source_dir, dataset).items():
        missing = [i for i in items_used if i not in codes]
        if missing:
            raise PrepError(
                f"{path}: {len(missing)} items of {inter_path} have no {modality} code "
                f"(e.g. {', '.join(missing[:5])}). Regenerate the codes for every item "
                f"(python -m dataset_prep codes ...) or remove that code file."
            )
        codes = {i: codes[i] for i in items_used}
        codes, n_colliding = disambiguate(codes, on_collision, path)
        check_codes(codes, modality, path, max_levels, codebook_size, suffixed=n_colliding > 0)
        summary[f"{modality}_colliding_items"] = n_colliding
        summary[f"{modality}_code_levels"] = len(next(iter(codes.values())))
        if n_colliding:
            logger.warning(
                f"{path}: {n_colliding} items shared a {modality} code; each got a disambiguating "
                f"level (--on_collision {on_collision}), now {len(codes)} unique codes."
            )
        item_fields[MODALITIES[modality]] = {i: format_code(c) for i, c in codes.items()}

    item_text_path = os.path.join(source_dir, f"{dataset}.item.json")
    if os.path.isfile(item_text_path):
        meta = read_json(item_text_path, "Item text file")
        item_fields["title"] = {i: clean_text((meta.get(i) or {}).get("title")) or "[no_title]" for i in items_used}

    out_dir = os.path.join(data_path, dataset)
    with atomic_write(os.path.join(out_dir, f"{dataset}.inter")) as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, seq in sequences.items():
            for position, item in enumerate(seq):
                f.write(f"{user}\t{item}\t{position}\n")
    with atomic_write(os.path.join(out_dir, f"{dataset}.item")) as f:
        fields = list(item_fields)
        header = ["item_id:token"] + [f"{name}:token_seq" for name in fields]
        f.write("\t".join(header) + "\n")
        for item in items_used:
            f.write("\t".join([item] + [item_fields[name][item] for name in fields]) + "\n")
    for name in fields:
        if name.endswith("_code"):
            write_json(os.path.join(out_dir, f"{dataset}.{name}.json"),
                       {i: item_fields[name][i].split() for i in items_used})
    summary["item_fields"] = fields
    summary["out_dir"] = out_dir
    outputs = [f"{dataset}.inter", f"{dataset}.item"] + [f"{dataset}.{n}.json" for n in fields if n.endswith("_code")]
    write_json(marker_path(dataset, data_path), {  # last: the files above are whole
        "version": MARKER_VERSION, "dataset": dataset, "source": os.path.abspath(source_dir),
        "source_files": file_hashes(source_files(dataset, source_dir)), "outputs": outputs,
        "on_collision": on_collision, "code_limits": {"max_levels": max_levels, "codebook_size": codebook_size},
    })
    return summary


def sequences_from_windows(paths):
    """Rebuild each user's chronological list from time-window CSVs (MiniOneRec's Amazon format:
    one row per (history, next item), histories cut to 10): the longest history + target wins."""
    import ast

    import pandas as pd

    best = {}
    for path in paths:
        try:
            frame = pd.read_csv(path, usecols=["user_id", "history_item_id", "item_id"])
        except (ValueError, OSError) as e:
            raise PrepError(f"{path}: cannot read user_id/history_item_id/item_id columns ({e}).") from None
        for user, history, item in frame.itertuples(index=False):
            sequence = [int(i) for i in ast.literal_eval(history)] + [int(item)]
            if len(sequence) > len(best.get(user, ())):
                best[user] = sequence
    return best


def leftovers(dataset, data_path):
    """Temporary files a writer of ``<data_path>/<dataset>`` left (it was killed, or is still writing)."""
    return glob.glob(os.path.join(data_path, dataset, f".{dataset}.*.tmp"))


def atomic_files_exist(dataset, data_path):
    """Whether ``<data_path>/<dataset>`` holds whole atomic files: its marker says so, or (files converted
    before the marker existed) ``.inter`` and ``.item`` are there and no writer left temporary files."""
    folder = os.path.join(data_path, dataset)
    marker = read_marker(dataset, data_path)
    if marker is not None:
        return all(os.path.isfile(os.path.join(folder, n)) for n in marker.get("outputs") or [])
    return (all(os.path.isfile(os.path.join(folder, f"{dataset}.{ext}")) for ext in ("inter", "item"))
            and not leftovers(dataset, data_path))


def conversion_needed(dataset, data_path, source_dir):
    """Why ``<data_path>/<dataset>`` must be converted (again) from ``source_dir``, or None when its files
    can be used: their marker says they are whole, and were converted from another folder or from these
    very source files. Without a source folder, atomic files made elsewhere (no marker) are taken as
    they are unless a killed writer left temporary files beside them."""
    marker = read_marker(dataset, data_path)
    folder = os.path.join(data_path, dataset)
    if marker is not None:
        missing = [n for n in marker.get("outputs") or [] if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            return f"incomplete ({', '.join(missing)} missing)"
        if source_dir is None or os.path.abspath(source_dir) != marker.get("source"):
            return None
        current = file_hashes(source_files(dataset, source_dir), marker.get("source_files"))
        old = {name: entry.get("sha256") for name, entry in (marker.get("source_files") or {}).items()}
        if {name: entry["sha256"] for name, entry in current.items()} != old:
            return f"out of date (the source files in {source_dir} changed since they were converted)"
        return None
    if not os.path.isfile(os.path.join(folder, f"{dataset}.inter")):
        return "missing"
    if source_dir is None:
        stale = leftovers(dataset, data_path)
        return f"incomplete ({len(stale)} temporary files of an interrupted conversion)" if stale else None
    return "incomplete (no completeness marker: an earlier conversion was interrupted, or predates the marker)"


def ensure_atomic_files(dataset, data_path, source=None, on_collision=DEFAULT_ON_COLLISION,
                        max_levels=CODE_MAX_LEVELS, codebook_size=CODEBOOK_SIZE):
    """Convert when the atomic files are missing, incomplete or out of date and a source folder is known
    (:func:`conversion_needed`); returns the conversion's summary, or None when nothing was converted.

    ``data_path`` is the parent folder (``dataset/``), as in RecBole's ``data_path`` key.
    """
    source_dir = resolve_source(dataset, source)
    reason = conversion_needed(dataset, data_path, source_dir)
    if reason is None:
        return None
    if source_dir is None and reason != "missing":
        raise PrepError(
            f"The atomic files in {os.path.join(data_path, dataset)} are {reason}: convert them again with "
            f"`python -m dataset_prep {dataset} --source DIR`, pass --source=DIR, or set {SOURCE_ENV}.")
    if source_dir is None:
        raise PrepError(
            f"Dataset '{dataset}' not found: no {os.path.join(data_path, dataset, dataset + '.inter')} and no "
            f"source folder. Run `python -m dataset_prep {dataset} --source DIR`, pass --source=DIR, or set "
            f"{SOURCE_ENV} to the folder holding {dataset}/ (e.g. ../shared/data)."
        )
    with conversion_lock(dataset, data_path):
        reason = conversion_needed(dataset, data_path, source_dir)  # another process may have converted it since
        if reason is None:
            return None
        logger.info(f"Atomic files of {dataset} {reason}: converting from {source_dir}")
        return _convert(dataset, source_dir, data_path, on_collision, max_levels, codebook_size)
