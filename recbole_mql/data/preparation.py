"""Data preparation for a run: the dataset's atomic files present and whole, the model's item
features checked, then RecBole's dataset and split (or, for pre-training, a compact sequence store)."""

import os
from logging import getLogger

from recbole.data import data_preparation

from dataset_prep.atomic import ensure_atomic_files
from dataset_prep.known import PrepOptions, needs_download, prepare_known_dataset
from recbole_mql import distributed
from recbole_mql.data.sequence_store import compact_dataset
from recbole_mql.utils import create_dataset


class ItemFeaturesMissing(ValueError):
    """A model's ``selected_features`` are not item fields of the dataset; the message names the fix."""


def prepare_atomic_files(config):
    """Build ``<data_path>/<Dataset>`` from its source folder on first use (see dataset_prep.atomic); with
    no source folder, a known dataset is downloaded first (dataset_prep.known; rank 0 only)."""
    parent = os.path.dirname(os.path.normpath(config["data_path"]))
    summary = None
    if distributed.is_main_process():  # one writer; the other ranks wait for its files
        if needs_download(config["dataset"], parent, config["source"]):  # no local source: a known dataset
            options = PrepOptions.from_config(config, progress=bool(config["show_progress"]))
            summary = prepare_known_dataset(config["dataset"], parent, options)
        else:
            summary = ensure_atomic_files(config["dataset"], parent, source=config["source"], **code_limits(config))
    distributed.barrier()
    if summary:
        getLogger().info(f"dataset_prep: {summary}")


def code_limits(config):
    """The quantitative language's size where the model has one: a conversion refuses codes beyond it."""
    keys = {"max_levels": "code_max_levels", "codebook_size": "codebook_size"}
    return {arg: config[key] for arg, key in keys.items() if config[key] is not None}


def check_item_features(config):
    """Raise :class:`ItemFeaturesMissing` when the model's ``selected_features`` (FDSA, SASRecF, GRU4RecF)
    are not item fields loaded from ``<Dataset>.item``: RecBole would fail with a bare KeyError."""
    wanted = config["selected_features"]
    if not wanted:
        return
    prepare_atomic_files(config)
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    header = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            header = [column.split(":")[0] for column in f.readline().rstrip("\n").split("\t")]
    load_col = config["load_col"]
    loaded = [c for c in header if load_col is None or c in (load_col.get("item") or [])]
    missing = [f for f in wanted if f not in loaded]
    if missing:
        raise ItemFeaturesMissing(
            f"selected_features {missing} are not item fields loaded from {path} (loaded: {loaded or 'none'}; "
            f"in the file: {header or 'no file'}): set selected_features to fields the dataset has and list them "
            f"in load_col['item'] (e.g. --selected_features=\"['text_code']\"; see properties/model/FDSA.yaml).")


def load_data(config):
    """(dataset, train, valid, test) for ``config``: converts the source on first use, then RecBole's split."""
    prepare_atomic_files(config)
    check_item_features(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def load_pretrain_domain(config):
    """(dataset, store) of ``config['dataset']``: RecBole's filtered, remapped dataset holding its item
    features only (enough to build a model: item count and code fields), and the
    :class:`~recbole_mql.data.sequence_store.SequenceStore` of its interactions (RecBole's split)."""
    prepare_atomic_files(config)
    check_item_features(config)
    dataset = create_dataset(config)  # no data_preparation: nothing augmented, nothing split
    return dataset, compact_dataset(dataset)
