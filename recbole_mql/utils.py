"""Model, trainer and dataset look-up: the plugin first, RecBole after (as RecBole-GNN does)."""

import difflib
import functools
import importlib
import os
import re

import torch
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_mql import distributed
from recbole_mql.compat import load_own_checkpoint

_RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


class UnknownModelError(ValueError):
    """A model name that neither the plugin nor RecBole knows."""


def plugin_models():
    """{name: class} of the models this plugin adds to RecBole."""
    module = importlib.import_module("recbole_mql.model")
    return {name: getattr(module, name) for name in module.__all__}


def _recbole_model_files():
    """{module name: package} of RecBole's model modules, read from disk: importing a package such
    as ``exlib_recommender`` would import optional libraries (lightgbm, xgboost)."""
    import recbole

    root = os.path.join(os.path.dirname(recbole.__file__), "model")
    files = {}
    for package in _RECBOLE_MODEL_PACKAGES:
        folder = os.path.join(root, package)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".py") and not name.startswith("_"):
                files.setdefault(name[:-3], package)
    return files


def get_model(model_name):
    """Return the model class for ``model_name``: plugin models first, then RecBole's.

    Raises :class:`UnknownModelError` with close matches instead of RecBole's
    ``No module named 'lightgbm'`` for a name that exists nowhere.
    """
    models = plugin_models()
    if model_name in models:
        return models[model_name]
    package = _recbole_model_files().get(model_name.lower())
    if package is not None:
        module = importlib.import_module(f"recbole.model.{package}.{model_name.lower()}")
        if hasattr(module, model_name):
            return getattr(module, model_name)
    class_names = _recbole_class_names()
    known = sorted(models) + [class_names.get(m, m) for m in sorted(_recbole_model_files())]
    lowered = {name.lower(): name for name in known}
    close = difflib.get_close_matches(model_name.lower(), list(lowered), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(lowered[c] for c in close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{model_name}': it is neither a recbole_mql model ({', '.join(sorted(models))}) "
        f"nor a RecBole model (names are case-sensitive, e.g. SASRec, BERT4Rec).{hint}"
    )


class CheckpointCompatMixin:
    """Loads RecBole checkpoints under torch >= 2.6 (they pickle the Config; see compat.py), and
    remembers the epoch of the best checkpoint (RecBole saves only when validation improves)."""

    best_epoch = None

    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type == "cuda":
            super().__init__(config, model)
        else:
            self._init_on_cpus(config, model)
        # the checkpoint name holds a timestamp: every rank must load the file rank 0 writes
        self.saved_model_file = distributed.broadcast_object(self.saved_model_file)

    def _init_on_cpus(self, config, model):
        # RecBole wraps the model in DDP with device_ids=[local_rank], which only GPU modules accept:
        # build the trainer as a single process would, then wrap the CPU model (gloo).
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = False
        self.distributed_model = torch.nn.parallel.DistributedDataParallel(self.model)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self.best_epoch = epoch
        return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)

    def resume_checkpoint(self, resume_file):
        self._restore(load_own_checkpoint(resume_file, map_location=self.device), str(resume_file))

    def _restore(self, checkpoint, resume_file):
        """Training state of a loaded checkpoint (RecBole's resume, on the full unpickler)."""
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            distributed.barrier()  # rank 0 has finished writing the checkpoint
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_own_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
        )


@functools.lru_cache(maxsize=None)
def _with_checkpoint_compat(base):
    """``base`` with :class:`CheckpointCompatMixin` in front (one class per base, so isinstance holds)."""
    return type(base.__name__, (CheckpointCompatMixin, base), {})


def get_trainer(model_type, model_name):
    """Return the trainer class: the plugin's ``<Model>Trainer`` if any, else RecBole's choice,
    wrapped so that it loads its own checkpoints on today's torch."""
    trainer_module = importlib.import_module("recbole_mql.trainer")
    own = getattr(trainer_module, model_name + "Trainer", None)
    if own is not None:
        return own
    return _with_checkpoint_compat(recbole_get_trainer(model_type, model_name))


def create_dataset(config):
    """Create the dataset: ``recbole_mql.data.<Model>Dataset`` if the plugin has one, else RecBole's."""
    from recbole.data import create_dataset as recbole_create_dataset

    data_module = importlib.import_module("recbole_mql.data")
    dataset_class = getattr(data_module, config["model"] + "Dataset", None)
    if dataset_class is None:
        return recbole_create_dataset(config)
    return dataset_class(config)


def _recbole_class_names():
    """{module name: class name} of RecBole's models, read from the packages' ``__init__.py`` text."""
    import recbole

    root = os.path.join(os.path.dirname(recbole.__file__), "model")
    names = {}
    for package in _RECBOLE_MODEL_PACKAGES:
        init = os.path.join(root, package, "__init__.py")
        if os.path.isfile(init):
            with open(init, encoding="utf-8") as f:
                for module, cls in re.findall(r"from \S*?\.?(\w+) import \*?(\w+)", f.read()):
                    names.setdefault(module, cls)
    return names
