"""run_recbole_mql(): the one path every model takes (plugin or RecBole), one split, one evaluator."""

import logging
import os
import sys
import time
from logging import getLogger

from recbole.data import data_preparation
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_mql import distributed
from recbole_mql.config import Config
from recbole_mql.data.item_codes import available_modalities
from recbole_mql.utils import create_dataset, get_model, get_trainer


def prepare_atomic_files(config):
    """Build ``<data_path>/<Dataset>`` from its source folder on first use (see dataset_prep.atomic)."""
    from dataset_prep.atomic import ensure_atomic_files

    parent = os.path.dirname(os.path.normpath(config["data_path"]))
    summary = None
    if distributed.is_main_process():  # one writer; the other ranks wait for its files
        summary = ensure_atomic_files(config["dataset"], parent, source=config["source"])
    distributed.barrier()
    if summary:
        getLogger().info(f"dataset_prep: {summary}")


class ItemFeaturesMissing(ValueError):
    """A model's ``selected_features`` are not item fields of the dataset; the message names the fix."""


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


def build_config(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None):
    return Config(model=model, dataset=dataset, config_file_list=config_file_list,
                  config_dict=config_dict, cmd_args=cmd_args)


def load_data(config):
    """(dataset, train, valid, test) for ``config``: converts the source on first use, then RecBole's split."""
    prepare_atomic_files(config)
    check_item_features(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def run_pretraining(model, config_file_list=None, config_dict=None, cmd_args=None):
    """Pre-train one backbone on ``pretrain_datasets`` (shared vocabulary); returns the checkpoint path.

    Each dataset runs the ``pretrain_tasks`` its codes allow (paper: seqrec + seqimage, 30 epochs,
    lr 1e-3, one epoch of warm-up), kept by validation loss. The datasets are loaded one at a time
    and kept only as compact sequence stores whose samples stream batch by batch (RecBole's split,
    without its 50-item rows), so memory stays flat as domains are added.
    """
    from recbole_mql.trainer.pretrain import PretrainTrainer, load_pretrain_domain

    base = build_config(model, None, config_file_list, {**(config_dict or {}), "dataset": "pretrain"}, cmd_args)
    overrides = {
        "tasks": base["pretrain_tasks"], "skip_unavailable_tasks": True, "epochs": base["pretrain_epochs"],
        "learning_rate": base["pretrain_learning_rate"], "warmup_ratio": 1.0 / base["pretrain_epochs"],
        "pretrain_datasets": None,
    }
    models, stores, backbone = [], [], None
    for name in base["pretrain_datasets"]:
        config = build_config(model, name, config_file_list, {**(config_dict or {}), **overrides}, cmd_args)
        config["eval_modality"] = "text"
        dataset, store = load_pretrain_domain(config)  # interactions already compacted into the store
        if "text" not in available_modalities(dataset):
            config["eval_modality"] = "image"
        init_seed(config["seed"], config["reproducibility"])
        net = get_model(config["model"])(config, dataset).to(config["device"])
        del dataset  # the model holds its code tables; RecBole's tables go before the next domain loads
        if backbone is None:
            backbone, first_config = net.t5, config
        net.t5 = backbone  # one model, many code tables
        models.append(net)
        stores.append(store)
    trainer = PretrainTrainer(first_config, models, stores)
    trainer.fit_all(show_progress=first_config["show_progress"])
    getLogger().info(f"pre-trained on {base['pretrain_datasets']}: {trainer.saved_model_file} "
                     f"(best epoch {trainer.best_epoch}, {trainer.best_valid_result})")
    return trainer.saved_model_file


def run_recbole_mql(model=None, dataset=None, config_file_list=None, config_dict=None,
                    cmd_args=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate it with full ranking; returns RecBole's result dict
    plus ``best_epoch``, ``train_seconds``, ``eval_seconds``, ``params`` and ``saved_model_file``.

    With ``pretrain_datasets`` set, first pre-trains on them, then fine-tunes on ``dataset`` from
    that checkpoint; ``pretrained_checkpoint`` fine-tunes from an existing one.
    """
    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_run_logger(config)
    logger = getLogger()
    if config["pretrain_datasets"]:
        config["pretrained_checkpoint"] = run_pretraining(config["model"], config_file_list, config_dict, cmd_args)
    logger.info(" ".join(sys.argv))
    logger.info(config)

    data, train_data, valid_data, test_data = load_data(config)
    logger.info(data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    params = sum(p.numel() for p in model.parameters())
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if config["pretrained_checkpoint"]:
        trainer.load_pretrained(config["pretrained_checkpoint"])
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"])

    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    train_seconds = time.time() - start
    start = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = time.time() - start

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "best_epoch": getattr(trainer, "best_epoch", None),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "params": params,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "log_file": _log_file(),
    }


def init_run_logger(config):
    """RecBole's logger (console + log file) on rank 0; the other ranks of a distributed run print
    errors only and write no log file."""
    if distributed.is_main_process():
        init_logger(config)
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.StreamHandler())
    root.setLevel(logging.ERROR)


def _log_file():
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
