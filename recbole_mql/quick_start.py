"""run_recbole_mql(): the one path every model takes (plugin or RecBole), one split, one evaluator."""

import logging
import os
import sys
import time
from logging import getLogger

from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_mql import distributed
from recbole_mql.checkpoint import data_fingerprint
from recbole_mql.config import Config, ConfigSources
from recbole_mql.data.item_codes import available_modalities
from recbole_mql.data.preparation import load_data, load_pretrain_domain
from recbole_mql.significance import RankRecorder, save_test_ranks
from recbole_mql.trainer.pretrain import PretrainTrainer
from recbole_mql.utils import get_model, get_trainer


def pretraining_configs(config):
    """One Config per dataset of ``config['pretrain_datasets']``, from the sources of the run's
    ``config`` with its ``pretrain_*`` keys as the training keys (paper: seqrec + seqimage, 30 epochs,
    lr 1e-3, one epoch of linear warm-up then a constant rate, 8,192 samples an optimizer step)."""
    sources = config.sources.with_config_dict({
        "tasks": config["pretrain_tasks"], "skip_unavailable_tasks": True, "epochs": config["pretrain_epochs"],
        "learning_rate": config["pretrain_learning_rate"], "warmup_ratio": 1.0 / config["pretrain_epochs"],
        "lr_schedule": config["pretrain_lr_schedule"], "train_batch_size": config["pretrain_train_batch_size"],
        "gradient_accumulation_steps": config["pretrain_gradient_accumulation_steps"],
        "pretrain_datasets": None,
    })
    return [Config.from_sources(config["model"], name, sources) for name in config["pretrain_datasets"]]


def run_pretraining(config):
    """Pre-train one backbone on the run ``config``'s ``pretrain_datasets`` (shared vocabulary);
    returns the checkpoint path.

    Each dataset runs the ``pretrain_tasks`` its codes allow, kept by validation loss. The datasets
    are loaded one at a time and kept only as compact sequence stores whose samples stream batch by
    batch (RecBole's split, without its 50-item rows), so memory stays flat as domains are added.
    """
    models, stores, backbone = [], [], None
    for domain in pretraining_configs(config):
        domain["eval_modality"] = "text"
        dataset, store = load_pretrain_domain(domain)  # interactions already compacted into the store
        if "text" not in available_modalities(dataset):
            domain["eval_modality"] = "image"
        init_seed(domain["seed"], domain["reproducibility"])
        net = get_model(domain["model"])(domain, dataset).to(domain["device"])
        del dataset  # the model holds its code tables; RecBole's tables go before the next domain loads
        if backbone is None:
            backbone, first_config = net.t5, domain
        net.t5 = backbone  # one model, many code tables
        models.append(net)
        stores.append(store)
    trainer = PretrainTrainer(first_config, models, stores)
    trainer.fit_all(show_progress=first_config["show_progress"])
    getLogger().info(f"pre-trained on {config['pretrain_datasets']}: {trainer.saved_model_file} "
                     f"(best epoch {trainer.best_epoch}, {trainer.best_valid_result})")
    return trainer.saved_model_file


def run_recbole_mql(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, sources=None):
    """Train ``model`` on ``dataset`` and evaluate it with full ranking; returns RecBole's result dict
    plus ``best_epoch``, ``train_seconds``, ``eval_seconds``, ``params`` and ``saved_model_file``.

    The config comes from ``sources`` (a :class:`~recbole_mql.config.ConfigSources`, as the CLI and
    the comparison pass it) or, as in RecBole's ``run_recbole``, from ``config_file_list`` and
    ``config_dict``. With ``pretrain_datasets`` set, first pre-trains on them, then fine-tunes on
    ``dataset`` from that checkpoint; ``pretrained_checkpoint`` fine-tunes from an existing one.
    """
    sources = ConfigSources.given(sources, config_file_list=config_file_list, config_dict=config_dict)
    config = Config.from_sources(model, dataset, sources)
    init_seed(config["seed"], config["reproducibility"])
    init_run_logger(config)
    logger = getLogger()
    if config["pretrain_datasets"]:
        config["pretrained_checkpoint"] = run_pretraining(config)
    logger.info(" ".join(sys.argv))
    logger.info(config)

    data, train_data, valid_data, test_data = load_data(config)
    logger.info(data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    params = sum(p.numel() for p in model.parameters())
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # recorded in every checkpoint: resuming one of another dataset, or of other data, is refused
    trainer.data_fingerprint = data_fingerprint(data, train_data, valid_data, test_data)
    if config["pretrained_checkpoint"]:
        trainer.load_pretrained(config["pretrained_checkpoint"])
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"])

    try:
        start = time.time()
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
        # a resumed run counts the training time before the resume too
        train_seconds = time.time() - start + getattr(trainer, "train_seconds_before", 0.0)
        start = time.time()
        trainer.evaluator = recorder = RankRecorder(trainer.evaluator)
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        eval_seconds = time.time() - start
    except KeyboardInterrupt:
        raise TrainingInterrupted(resume_hint(trainer)) from None

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    ranks_file = None
    if distributed.is_main_process():
        ranks_file = save_test_ranks(test_ranks_path(config, trainer, saved), recorder, test_data)
        if ranks_file:
            logger.info(f"per-user test ranks: {ranks_file}")
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
        "ranks_file": ranks_file,
        "collision_scoring": config["collision_scoring"],
        "ended_by": getattr(trainer, "ended_by", None),
        "epochs_trained": epochs_trained(trainer),
    }


def epochs_trained(trainer):
    """Epochs the model has been trained, those before a resume included."""
    trained = getattr(trainer, "train_loss_dict", None)
    return max(trained) + 1 if trained else getattr(trainer, "start_epoch", 0)


def test_ranks_path(config, trainer, saved):
    """``ranks_file`` when set (the comparison sets it), else beside the best checkpoint."""
    if config["ranks_file"]:
        return config["ranks_file"]
    stem = os.path.splitext(trainer.saved_model_file)[0] if saved else os.path.join(
        config["checkpoint_dir"], f"{config['model']}-{config['dataset']}")
    return stem + ".ranks.csv.gz"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to go on from what was saved."""


def resume_hint(trainer):
    """How to continue a run interrupted now (one line)."""
    last = getattr(trainer, "last_model_file", None)
    if last and os.path.isfile(last):
        return (f"interrupted: the state after the last finished epoch is in {last}; run the same command with "
                f"--resume=last to go on from there.")
    best = getattr(trainer, "saved_model_file", None)
    if getattr(trainer, "best_epoch", None) is not None and best and os.path.isfile(best):
        return (f"interrupted: the best model so far (epoch {trainer.best_epoch}) is {best}; run the same command "
                f"with --resume={best} to go on from that epoch.")
    return "interrupted before any epoch finished: nothing was saved; run the same command again."


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
