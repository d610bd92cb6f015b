"""Model, trainer and dataset look-up: the plugin first, RecBole after (as RecBole-GNN does).

The plugin's packages are imported when first looked up (``recbole_mql.model`` loads transformers),
so that reading a config does not load every model.
"""

import difflib
import importlib
import os
import re

import recbole
from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_mql.compat import import_recbole_module

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
        module = import_recbole_module(f"recbole.model.{package}.{model_name.lower()}")
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


def get_trainer(model_type, model_name):
    """Return the trainer class: the plugin's ``<Model>Trainer`` if any, else RecBole's choice with
    :class:`~recbole_mql.trainer.recbole_compat.RecBoleCompatMixin` in front (own checkpoints on
    today's torch, best epoch, DDP on CPUs)."""
    trainers = importlib.import_module("recbole_mql.trainer")
    own = getattr(trainers, model_name + "Trainer", None)
    if own is not None:
        return own
    return trainers.with_recbole_compat(recbole_get_trainer(model_type, model_name))


def create_dataset(config):
    """Create the dataset: ``recbole_mql.data.<Model>Dataset`` if the plugin has one, else RecBole's."""
    data_module = importlib.import_module("recbole_mql.data")
    dataset_class = getattr(data_module, config["model"] + "Dataset", None)
    if dataset_class is None:
        return recbole_create_dataset(config)
    return dataset_class(config)


def _recbole_class_names():
    """{module name: class name} of RecBole's models, read from the packages' ``__init__.py`` text."""
    root = os.path.join(os.path.dirname(recbole.__file__), "model")
    names = {}
    for package in _RECBOLE_MODEL_PACKAGES:
        init = os.path.join(root, package, "__init__.py")
        if os.path.isfile(init):
            with open(init, encoding="utf-8") as f:
                for module, cls in re.findall(r"from \S*?\.?(\w+) import \*?(\w+)", f.read()):
                    names.setdefault(module, cls)
    return names
