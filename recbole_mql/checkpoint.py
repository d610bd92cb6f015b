"""Checkpoints that hold data, never code, and say whose they are.

- **Written** by :func:`save_checkpoint`, atomically, as plain data only: tensors, numbers,
  strings, lists, tuples, dicts and ``torch.device``. The config is stored as the resolved dict
  (:func:`config_dict`), not RecBole's ``Config`` object; RecBole's enums (``ModelType``...), numpy
  arrays and scipy sparse matrices (a RecBole model's ``other_parameter``) as small tagged dicts
  that :func:`from_plain` turns back (enums only from a fixed list).
- **Read** by :func:`load_checkpoint_file` with torch's weights-only unpickler and no class allowed
  beyond torch's defaults: a file that needs any other class (a crafted pickle, a checkpoint written
  before this format, which pickled RecBole's Config) is refused with :class:`CheckpointError`, as
  is a truncated, empty or foreign file. Loading runs no code; ``torch.load(path, weights_only=True)``
  reads our files too.
- **Whose**: every checkpoint records ``identity`` (model, dataset, a fingerprint of the dataset's
  items and split, the keys that fix the architecture). :func:`check_same_run` refuses to resume
  another run's checkpoint; :func:`load_weights` refuses weights of another architecture with one
  line naming the settings that differ, instead of torch's wall of size mismatches.

A checkpoint of an earlier recbole_mql that you wrote yourself converts once with
``python -m recbole_mql.checkpoint OLD.pth [NEW.pth]``: only a torch zip file, read by an unpickler that finds
the old format's classes by name only and sets state on no class (:class:`_LegacyUnpickler`); anything else is refused.
"""

import enum
import functools
import hashlib
import importlib
import io
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import recbole
import torch
from recbole.utils import enum_type

from dataset_prep.io import atomic_write
from dataset_prep.resources import properties_dir, yaml_keys

FORMAT = 2  # 1: pickled RecBole Config (before issue 15); 2: plain data
# Enums of RecBole's resolved config (MODEL_TYPE, MODEL_INPUT_TYPE, eval_type), stored by name.
ENUMS = {name: getattr(enum_type, name) for name in
         ("ModelType", "InputType", "EvaluatorType", "FeatureType", "FeatureSource") if hasattr(enum_type, name)}
_TAG = "__recbole_mql__"
# Keys that fix a generative model's architecture (T5 backbone and quantitative language).
GENERATIVE_ARCHITECTURE = ("code_max_levels", "codebook_size", "d_model", "d_ff", "d_kv", "num_layers",
                           "num_decoder_layers", "num_heads", "relative_attention_num_buckets", "feed_forward_proj")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, refused, or of another run; the message names
    the file and what to do."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint of another model, dataset or architecture than the run's."""


# -------------------------------------------------------------------------------- plain data
def to_plain(value, where="checkpoint"):
    """``value`` as data the weights-only unpickler reads back; :class:`CheckpointError` for an object
    that has no plain form (naming where it sits)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.generic):  # before the plain types: np.float64 is a float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.device)):
        return value
    if isinstance(value, torch.nn.Module):
        # a submodule a RecBole model lists in other_parameter (FDSA's feature_embed_layer): its weights are in
        # the state_dict, the rebuilt model has the module itself
        return {_TAG: "module"}
    if type(value) in ENUMS.values():
        return {_TAG: "enum", "type": type(value).__name__, "name": value.name}
    if isinstance(value, np.ndarray):
        return _plain_array(value, where)
    if isinstance(value, dict):
        kind = OrderedDict if isinstance(value, OrderedDict) else dict
        return kind((k, to_plain(v, f"{where}.{k}")) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        kind = tuple if isinstance(value, tuple) else list
        return kind(to_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy comes with RecBole
        sp = None
    if sp is not None and sp.issparse(value):
        csr = value.tocsr()
        return {_TAG: "csr_matrix", "shape": list(csr.shape), "data": _plain_array(csr.data, where),
                "indices": _plain_array(csr.indices, where), "indptr": _plain_array(csr.indptr, where)}
    raise CheckpointError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint (plain data "
                          f"only: tensors, numbers, strings, lists, dicts).")


def _plain_array(array, where):
    if array.dtype == object:
        raise CheckpointError(f"{where}: an array of Python objects cannot be stored in a checkpoint.")
    kind = {"b": np.bool_, "i": np.int64, "u": np.int64, "f": np.float64, "c": np.complex128}.get(array.dtype.kind)
    if kind is None:
        raise CheckpointError(f"{where}: a {array.dtype} array cannot be stored in a checkpoint.")
    return {_TAG: "ndarray", "dtype": str(array.dtype), "data": torch.from_numpy(np.ascontiguousarray(array, kind))}


def from_plain(value):
    """Undo the tags of :func:`to_plain` (numpy arrays, scipy sparse matrices)."""
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "ndarray":
            return value["data"].numpy().astype(value["dtype"])
        if tag == "enum" and value.get("type") in ENUMS:
            return ENUMS[value["type"]][value["name"]]
        if tag == "csr_matrix":
            import scipy.sparse as sp

            return sp.csr_matrix((from_plain(value["data"]), from_plain(value["indices"]), from_plain(value["indptr"])),
                                 shape=tuple(value["shape"]))
        return type(value)((k, from_plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(v) for v in value)
    return value


def load_other_parameter(model, state):
    """``model.load_other_parameter`` with what the checkpoint stored besides the weights (submodules,
    stored as a tag, stay the rebuilt model's own)."""
    other = state.get("other_parameter")
    if isinstance(other, dict):
        other = {k: v for k, v in other.items() if not (isinstance(v, dict) and v.get(_TAG) == "module")}
    model.load_other_parameter(other)


def config_dict(config):
    """The resolved config (``Config.final_config_dict``, or a dict) as plain data; a value that has no
    plain form is stored as its text (it is informative only)."""
    values = getattr(config, "final_config_dict", config)
    out = {}
    for key, value in values.items():
        try:
            out[key] = to_plain(value, key)
        except CheckpointError:
            out[key] = str(value)
    return out


# ----------------------------------------------------------------------------------- identity
def model_property_keys(model):
    """Keys of the model's property files (RecBole's and this project's): its architecture and
    training knobs; named when weights do not fit."""
    keys = set()
    for folder in (os.path.join(os.path.dirname(recbole.__file__), "properties"), properties_dir()):
        path = os.path.join(folder, "model", f"{model}.yaml")
        if os.path.isfile(path):
            keys.update(yaml_keys(path))
    return keys


def architecture(config):
    """{key: value} of the settings that shape the model's weights (as far as they are known)."""
    keys = set(GENERATIVE_ARCHITECTURE) | model_property_keys(config["model"]) | {"MAX_ITEM_LIST_LENGTH"}
    return {key: to_plain_or_text(config[key]) for key in sorted(keys) if key in config}


def to_plain_or_text(value):
    try:
        return to_plain(value)
    except CheckpointError:
        return str(value)


def identity(config, fingerprint=None):
    """What a checkpoint records of its run: model, dataset, data fingerprint, architecture."""
    return {"model": config["model"], "dataset": config["dataset"], "fingerprint": fingerprint,
            "architecture": architecture(config)}


def stored_identity(state):
    """The run a loaded checkpoint belongs to (read from its config where it predates ``identity``)."""
    if isinstance(state.get("identity"), dict):
        return state["identity"]
    config = state.get("config") or {}
    return {"model": config.get("model"), "dataset": config.get("dataset"), "fingerprint": None,
            "architecture": {k: config[k] for k in GENERATIVE_ARCHITECTURE if k in config}}


def data_fingerprint(dataset, *loaders):
    """16 hex digits over the dataset's items (RecBole's internal order) and the users and items of
    each split (``loaders``: train, valid, test): a checkpoint's weights mean something only there."""
    digest = hashlib.sha256()
    for field in (dataset.iid_field, dataset.uid_field):
        digest.update("\x1f".join(map(str, dataset.field2id_token[field])).encode())
    for loader in loaders:
        split = getattr(loader, "_dataset", loader)
        digest.update(b"\x1e")
        for field in (split.uid_field, split.iid_field):
            digest.update(split.inter_feat[field].numpy().astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def _describe(ident):
    fingerprint = f", data {ident['fingerprint']}" if ident.get("fingerprint") else ""
    return f"{ident.get('model')} on {ident.get('dataset')}{fingerprint}"


def check_same_run(state, config, fingerprint, path):
    """Refuse to resume ``state`` (loaded from ``path``) in a run of another model, dataset, data or
    architecture: :class:`CheckpointMismatch` naming both."""
    theirs, ours = stored_identity(state), identity(config, fingerprint)
    problems = []
    if theirs.get("model") != ours["model"]:
        problems.append(f"model {theirs.get('model')} != {ours['model']}")
    if theirs.get("dataset") != ours["dataset"]:
        problems.append(f"dataset {theirs.get('dataset')} != {ours['dataset']}")
    elif theirs.get("fingerprint") and ours["fingerprint"] and theirs["fingerprint"] != ours["fingerprint"]:
        problems.append(f"the items or split of {ours['dataset']} differ (data {theirs['fingerprint']} != "
                        f"{ours['fingerprint']}: the dataset was converted again or filtered otherwise)")
    problems += architecture_differences(theirs.get("architecture") or {}, ours["architecture"], strict=True)
    if problems:
        raise CheckpointMismatch(
            f"{path} is a checkpoint of {_describe(theirs)}, this run is {_describe(ours)} ({'; '.join(problems)}): "
            f"resume a checkpoint of this model and dataset (--resume=last for its own), or leave out --resume.")


def architecture_differences(stored, current, strict=False):
    """``["key a != b", ...]`` for keys both know whose values differ (``strict``: the generative keys only,
    which always shape the weights)."""
    keys = [k for k in sorted(set(stored) & set(current)) if not strict or k in GENERATIVE_ARCHITECTURE]
    return [f"{k} {stored[k]!r} != {current[k]!r}" for k in keys if stored[k] != current[k]]


def load_weights(model, state, path, config=None, strict=True):
    """``model.load_state_dict(state["state_dict"])``, after checking names and shapes: weights of another
    architecture are one :class:`CheckpointMismatch` naming the settings that differ."""
    theirs, own = state["state_dict"], model.state_dict()
    missing = [k for k in own if k not in theirs] if strict else []
    unexpected = [k for k in theirs if k not in own]
    shapes = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        if shapes:
            key = shapes[0]
            example = f"{key} is {list(theirs[key].shape)} there, {list(own[key].shape)} here"
        else:
            example = f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]}"
        ident = stored_identity(state)
        settings = ""
        if config is not None:
            differ = architecture_differences(ident.get("architecture") or {}, architecture(config))
            settings = f"; settings that differ: {', '.join(differ)}" if differ else ""
        raise CheckpointMismatch(
            f"{path} holds the weights of another architecture ({ident.get('model')}: "
            f"{len(missing) + len(unexpected) + len(shapes)} tensors do not fit, e.g. {example}{settings}): "
            f"use the settings it was trained with, or a checkpoint of this model.")
    model.load_state_dict(theirs, strict=strict)


# ------------------------------------------------------------------------------ write and read
def save_checkpoint(state, path):
    """Write ``state`` (made plain, :func:`to_plain`) to ``path`` atomically."""
    state = to_plain({**state, "format": FORMAT})
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint_file(path, map_location="cpu"):
    """The checkpoint at ``path``, read with torch's weights-only unpickler (no code runs); refused with
    :class:`CheckpointError` when unreadable, when it needs other classes, or when it is not a
    training checkpoint. A missing file is a ``FileNotFoundError``."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}. Pass the .pth written by training (saved/, or "
                                f"results/<dataset>/<run>/checkpoints/).")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it is not a checkpoint; use another .pth of the run.")
    try:
        with warnings.catch_warnings():  # torch warns about a crafted file's pickle protocol: we refuse it anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(refusal(path, e)) from None
    if not isinstance(state, dict) or "state_dict" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of recbole_mql (no stored config and "
                              f"state_dict): pass the .pth written by run_recbole_mql.py.")
    return from_plain(state)


def refusal(path, error):
    """One line saying why torch could not (or would not) read ``path``."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    name = found.group(1) if found else foreign_global(path)
    if name:  # the pickle names a class or function: the weights-only unpickler refused to call it
        legacy = ""
        if name.startswith(("recbole.", "recbole_mql.")):
            legacy = (" If you wrote it with an earlier recbole_mql, convert it once: python -m recbole_mql.checkpoint "
                      f"{path} (only for a file you trust).")
        return (f"{path} needs Python objects besides tensors and plain data ({name}); loading it could run code, "
                f"so it is refused.{legacy}")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+(?:\n[^\n]+)?)", text)
    first = (detail.group(1) if detail else " ".join(text.split()).split(". ")[0])
    first = " ".join(first.split())[:120] or "no detail"
    return (f"{path} is not a readable checkpoint ({type(error).__name__}: {first}): it is truncated, damaged or "
            f"not a .pth written by training; use another checkpoint of the run.")


def foreign_global(path):
    """The first class or function outside torch that the pickle inside ``path`` names (None if none, or
    unreadable). Read with ``pickletools``, which parses opcodes and never runs them."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            with open(path, "rb") as f:
                data = f.read()
        strings = []
        for opcode, arg, _ in pickletools.genops(data):
            name = None
            if opcode.name == "GLOBAL":
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            elif isinstance(arg, str):
                strings.append(arg)
            if name and not name.startswith(("torch.", "collections.OrderedDict", "builtins.")):
                return name
    except Exception:  # noqa: BLE001 - a damaged file: no name to report
        return None
    return None


# What checkpoints of earlier recbole_mql pickled beyond torch's own types: numpy's random state,
# RecBole's enums, and the Config (RecBole's or ours: its sources, YAML loader and model classes). The
# Config's classes are never imported or called: each is read as an inert stand-in whose attributes
# the file sets (all the conversion reads is ``final_config_dict``).
_LEGACY_NAMES = {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype"}
_STAND_IN_PREFIXES = ("recbole_mql.", "recbole.", "yaml.")


class _StandIn:
    """Stands for a class of an old checkpoint's Config: no code of it is imported or run."""


@functools.lru_cache(maxsize=None)
def _legacy_global(name):
    """The object an earlier-format checkpoint may name: torch's weights-only set, numpy's array and
    dtype classes, RecBole's enums, a stand-in for the Config's classes; else None (refused)."""
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_allowed = _get_allowed_globals()
    if name in torch_allowed:
        return torch_allowed[name]
    module, _, attr = name.rpartition(".")
    if name in _LEGACY_NAMES:
        return getattr(importlib.import_module(module), attr, None)
    if module == "numpy.dtypes":  # the DType classes only (not the module's helpers or __builtins__)
        found = getattr(importlib.import_module(module), attr, None)
        return found if isinstance(found, type) and issubclass(found, np.dtype) else None
    if module == "recbole.utils.enum_type":
        found = getattr(enum_type, attr, None)
        return found if isinstance(found, type) and issubclass(found, enum.Enum) else None
    if name.startswith(_STAND_IN_PREFIXES):
        return _StandIn
    return None


class _LegacyUnpickler(pickle._Unpickler):
    """Finds only :func:`_legacy_global` names, and sets state (pickle's BUILD) only on objects the old
    format built that way, never on a class (which would change it for the whole process): anything
    else is refused before it is called or set. Python's own unpickler, so that BUILD can be checked."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        found = _legacy_global(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return found

    def load_build(self):
        target, state = self.stack[-2], self.stack[-1]
        if not isinstance(target, (_StandIn, OrderedDict, torch.Tensor, np.ndarray, np.dtype)):
            raise pickle.UnpicklingError(f"state set on {type(target).__module__}.{type(target).__qualname__}")
        if isinstance(target, _StandIn) and not (
                isinstance(state, dict) and not any(str(key).startswith("__") for key in state)):
            raise pickle.UnpicklingError("a stand-in's state other than plain attributes")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


class _LegacyPickle:
    """The pickle module ``torch.load`` is given: every way it reads a pickle goes through
    :class:`_LegacyUnpickler`."""

    UnpicklingError = pickle.UnpicklingError
    Unpickler = _LegacyUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _LegacyUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data, **kwargs):
        return _LegacyUnpickler(io.BytesIO(data), **kwargs).load()


def upgrade(path, out=None):
    """Rewrite a checkpoint of an earlier recbole_mql (pickled RecBole Config) as plain data. Only a
    torch zip file is read, and in it only the old format's classes are found by name
    (:class:`_LegacyUnpickler`): a file that needs anything else is refused before anything in it is
    called, so converting never runs code from the file."""
    out = out or path
    if not zipfile.is_zipfile(str(path)):
        raise CheckpointError(f"{path} is not a checkpoint recbole_mql wrote (not a torch zip file): refused. "
                              f"Convert only checkpoints recbole_mql wrote.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_LegacyPickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} needs {e}, which no checkpoint of recbole_mql held: refused (it could run "
                              f"code). Convert only checkpoints recbole_mql wrote.") from None
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({e}); is the file complete?") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict).")
    state = dict(state)
    state["config"] = config_dict(state.get("config") or {})
    if "best_model_file" in state:  # an absolute path decided where a resumed run wrote: keep the name only
        state["best_model_name"] = os.path.basename(str(state.pop("best_model_file") or "")) or None
    if isinstance(state.get("rng"), dict):
        state["rng"] = {k: to_plain_or_text(v) for k, v in state["rng"].items()}
    save_checkpoint(state, out)
    load_checkpoint_file(out)  # what was written reads back weights-only
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(argv) <= 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m recbole_mql.checkpoint OLD.pth [NEW.pth]\n  rewrites a checkpoint of an earlier "
              "recbole_mql (which pickled RecBole's Config) as plain data; only the classes those checkpoints held are "
              "read, any other file is refused")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        print(f"wrote {upgrade(*argv)}")
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
