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
refuses such files.
"""

import glob
import html
import logging
import os
import re

from dataset_prep import code_tokens
from dataset_prep.collisions import collision_groups, item_order, suffix_ranks
from dataset_prep.io import PrepError, atomic_write, read_json, write_json

logger = logging.getLogger(__name__)

MODALITIES = {"text": "text_code", "image": "image_code"}
SOURCE_ENV = "RECBOLE_MQL_SOURCE"
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


def convert(dataset, source_dir, data_path="dataset", on_collision=DEFAULT_ON_COLLISION):
    """Write the atomic files of ``dataset`` from ``source_dir``; returns a summary dict."""
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
    items_used = sorted({str(i) for seq in sequences.values() for i in seq}, key=item_order)

    item_fields = {}
    summary = {"users": len(sequences), "items": len(items_used),
               "interactions": sum(len(s) for s in sequences.values())}
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


def atomic_files_exist(dataset, data_path):
    folder = os.path.join(data_path, dataset)
    return os.path.isfile(os.path.join(folder, f"{dataset}.inter"))


def ensure_atomic_files(dataset, data_path, source=None, on_collision=DEFAULT_ON_COLLISION):
    """Convert on first use when the atomic files are missing and a source folder is known.

    ``data_path`` is the parent folder (``dataset/``), as in RecBole's ``data_path`` key.
    """
    if atomic_files_exist(dataset, data_path):
        return None
    source_dir = resolve_source(dataset, source)
    if source_dir is None:
        raise PrepError(
            f"Dataset '{dataset}' not found: no {os.path.join(data_path, dataset, dataset + '.inter')} and no "
            f"source folder. Run `python -m dataset_prep {dataset} --source DIR`, pass --source=DIR, or set "
            f"{SOURCE_ENV} to the folder holding {dataset}/ (e.g. ../shared/data)."
        )
    logger.info(f"Atomic files of {dataset} missing: converting from {source_dir}")
    return convert(dataset, source_dir, data_path, on_collision)
