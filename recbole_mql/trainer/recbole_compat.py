"""What RecBole 1.2.1's trainers need to run in this harness, one small mixin per job:

- :class:`CheckpointMixin`: checkpoints of plain data, read weights-only (RecBole pickles its
  Config into them; see :mod:`recbole_mql.checkpoint`), each recording whose it is (model,
  dataset, data fingerprint, architecture): resuming another run's checkpoint is refused; the
  epoch of the best checkpoint is kept (RecBole does not); a resumed run with nothing left to
  train tests its checkpoint and writes nothing (RecBole re-saves it as "epoch -1");
- :class:`DistributedMixin`: DDP on CPUs, and every rank on the checkpoint name rank 0 chose.

:class:`RecBoleCompatMixin` holds both; :func:`with_recbole_compat` puts it in front of a
RecBole trainer class.
"""

import functools
import time

import torch
from recbole.utils import set_color

from recbole_mql import distributed
from recbole_mql.checkpoint import (check_same_run, config_dict, identity, load_checkpoint_file,
                                    load_other_parameter, load_weights, save_checkpoint)


class DistributedMixin:
    """RecBole's trainer set-up in a distributed run on CPUs, and one checkpoint name for all ranks."""

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


class CheckpointMixin:
    """Plain-data checkpoints that say whose they are; ``best_epoch``; resume without re-saving.

    ``data_fingerprint`` (set by the quick start, :func:`recbole_mql.checkpoint.data_fingerprint`)
    is recorded in every checkpoint and compared on resume.
    """

    best_epoch = None  # epoch of the checkpoint kept (None before the first save)
    data_fingerprint = None
    train_seconds_before = 0.0  # training time of the run before it was resumed
    _fit_start = None

    def _train_seconds(self):
        """Training time of the run so far, the sessions before a resume included."""
        return self.train_seconds_before + (time.time() - self._fit_start if self._fit_start else 0.0)

    def _checkpoint_state(self, epoch):
        """What every checkpoint holds (plain data; the generative trainer adds its own keys)."""
        return {
            "config": config_dict(self.config),
            "identity": identity(self.config, self.data_fingerprint),
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": getattr(self, "best_valid_result", None),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "train_seconds": self._train_seconds(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """The best checkpoint (RecBole calls this when validation improves), written atomically by rank 0."""
        self.best_epoch = epoch
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        if not distributed.is_main_process():
            return
        save_checkpoint(self._checkpoint_state(epoch), path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def resume_checkpoint(self, resume_file):
        """Continue the run of ``resume_file``; :class:`~recbole_mql.checkpoint.CheckpointMismatch` when it is
        another model's, dataset's or architecture's."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint_file(resume_file, map_location=self.device)
        check_same_run(checkpoint, self.config, self.data_fingerprint, resume_file)
        self._restore(checkpoint, resume_file)

    def _restore(self, checkpoint, resume_file):
        """Training state of a loaded checkpoint (RecBole's resume: the best model is kept in ``resume_file``)."""
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self.best_epoch = checkpoint.get("best_epoch", checkpoint["epoch"])
        self.train_seconds_before = float(checkpoint.get("train_seconds") or 0.0)
        load_weights(self.model, checkpoint, resume_file, self.config)
        load_other_parameter(self.model, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.start_epoch >= self.epochs and self.best_epoch is not None:
            # resumed with no epoch left: RecBole would save the loaded weights again as "epoch -1"
            self.logger.info(f"Nothing left to train (epoch {self.start_epoch} of {self.epochs}): testing "
                             f"{self.saved_model_file} as it is (best epoch {self.best_epoch}).")
            return self.best_valid_score, self.best_valid_result
        self._fit_start = time.time()
        return super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                           callback_fn=callback_fn)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            distributed.barrier()  # rank 0 has finished writing the checkpoint
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint_file(checkpoint_file, map_location=self.device)
            load_weights(self.model, checkpoint, checkpoint_file, self.config)
            load_other_parameter(self.model, checkpoint)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
        )


# Kept for code that names the former mixins: both are CheckpointMixin now.
BestEpochMixin = OwnCheckpointMixin = CheckpointMixin


class RecBoleCompatMixin(DistributedMixin, CheckpointMixin):
    """The mixins above, in front of a RecBole trainer."""


@functools.lru_cache(maxsize=None)
def with_recbole_compat(base):
    """``base`` with :class:`RecBoleCompatMixin` in front (one class per base, so isinstance holds)."""
    return type(base.__name__, (RecBoleCompatMixin, base), {})
