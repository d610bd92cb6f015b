"""What RecBole 1.2.1's trainers need to run in this harness, one small mixin per job:

- :class:`CheckpointMixin`: checkpoints of plain data, read weights-only (RecBole pickles its
  Config into them; see :mod:`recbole_mql.checkpoint`), each recording whose it is (model,
  dataset, data fingerprint, architecture): resuming another run's checkpoint is refused; the
  epoch of the best checkpoint is kept (RecBole does not); a resumed run with nothing left to
  train tests its checkpoint and writes nothing (RecBole re-saves it as "epoch -1");
- :class:`DistributedMixin`: DDP on CPUs, and every rank on the checkpoint name rank 0 chose;
- :class:`TimeBudgetMixin`: ``time_budget_minutes`` (the generative trainer applies it in its own
  loop; :class:`RecBoleTimeBudgetMixin` around RecBole's).

:class:`RecBoleCompatMixin` holds the first two; :func:`with_recbole_compat` puts it and the time
budget in front of a RecBole trainer class.
"""

import functools
import os
import time

import torch
from recbole.utils import set_color

from recbole_mql import distributed
from recbole_mql.checkpoint import (check_same_run, config_dict, identity, load_checkpoint_file,
                                    load_other_parameter, load_weights, save_checkpoint)


class DistributedMixin:
    """RecBole's trainer set-up in a distributed run on CPUs, and one checkpoint name for all ranks."""

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: two ranks doing so at once made one fail with
        # FileExistsError (seen in CI), so the folder is made here, where a second maker is harmless
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
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

# What ended a run's training (``ended_by`` in its result and the comparison table).
ENDED_BY_BUDGET, ENDED_BY_EARLY_STOPPING, ENDED_BY_EPOCHS = "time budget", "early stopping", "epoch limit"


class BudgetEnded(Exception):
    """Raised before an epoch that would not end within ``time_budget_minutes``."""


class TimeBudgetMixin:
    """``time_budget_minutes`` (0: none): training stops after the last epoch that fits the budget.

    The budget counts this process's training and validation from the start of ``fit`` (not the data
    loading, nor the test of the best checkpoint that follows); before each epoch, the time so far
    plus the mean training time of the epochs run so far (plus the mean validation time when that
    epoch validates) must stay within it. The first epoch always runs. A run ended by its budget is
    not finished: ``--resume=last`` continues it (with the budget again, counted from the resume).
    """

    ended_by = None  # ENDED_BY_* once fit has returned

    def _budget_start(self):
        self._budget_t0 = time.time()
        self._epoch_seconds, self._valid_seconds = [], []

    def _budget_seconds(self):
        return float(self.config["time_budget_minutes"] or 0) * 60.0

    def _record_epoch(self, train_seconds=None, valid_seconds=None):
        if train_seconds is not None:
            self._epoch_seconds.append(train_seconds)
        if valid_seconds is not None:
            self._valid_seconds.append(valid_seconds)

    def _check_budget(self, epoch, validates):
        """Raise :class:`BudgetEnded` when epoch ``epoch`` (validating or not) would end past the budget."""
        budget = self._budget_seconds()
        if not budget or not getattr(self, "_epoch_seconds", None):
            return
        elapsed = time.time() - self._budget_t0
        estimate = sum(self._epoch_seconds) / len(self._epoch_seconds)
        if validates and self._valid_seconds:
            estimate += sum(self._valid_seconds) / len(self._valid_seconds)
        if elapsed + estimate > budget:
            raise BudgetEnded(
                f"time budget of {budget / 60:g} min: {elapsed / 60:.1f} min used, epoch {epoch} would take "
                f"~{estimate / 60:.1f} min more; training ends after epoch {epoch - 1} (the best checkpoint is "
                f"tested as usual; --resume=last continues the run)")


class RecBoleTimeBudgetMixin(TimeBudgetMixin):
    """The time budget around RecBole's own ``fit`` loop: epochs and validations timed, the loop left
    before an epoch that would not fit; ``ended_by`` set."""

    _last_epoch = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._budget_start()
        self.ended_by = None
        try:
            result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                                 callback_fn=callback_fn)
        except BudgetEnded as ended:
            self.logger.info(str(ended))
            self.ended_by = ENDED_BY_BUDGET
            return self.best_valid_score, getattr(self, "best_valid_result", None)
        last = self.start_epoch - 1 if self._last_epoch is None else self._last_epoch
        self.ended_by = ENDED_BY_EPOCHS if last + 1 >= self.epochs else ENDED_BY_EARLY_STOPPING
        return result

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        validates = self.eval_step > 0 and (epoch_idx + 1) % self.eval_step == 0
        self._check_budget(epoch_idx, validates)
        start = time.time()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self._record_epoch(train_seconds=time.time() - start)
        self._last_epoch = epoch_idx
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        start = time.time()
        result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._record_epoch(valid_seconds=time.time() - start)
        return result


class RecBoleCompatMixin(DistributedMixin, CheckpointMixin):
    """The mixins above, in front of a RecBole trainer."""


@functools.lru_cache(maxsize=None)
def with_recbole_compat(base):
    """``base`` with :class:`RecBoleCompatMixin` and the time budget in front (one class per base, so
    isinstance holds)."""
    return type(base.__name__, (RecBoleTimeBudgetMixin, RecBoleCompatMixin, base), {})
