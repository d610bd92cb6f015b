"""What RecBole 1.2.1's trainers need to run in this harness, one small mixin per job:

- :class:`OwnCheckpointMixin`: load the trainer's own checkpoints under torch >= 2.6 (they pickle
  the Config, which the weights-only loader refuses; see ``recbole_mql.compat``);
- :class:`BestEpochMixin`: remember the epoch of the best checkpoint (RecBole saves only when
  validation improves, and does not keep the epoch);
- :class:`DistributedMixin`: DDP on CPUs, and every rank on the checkpoint name rank 0 chose.

:class:`RecBoleCompatMixin` holds all three; :func:`with_recbole_compat` puts it in front of a
RecBole trainer class.
"""

import functools

import torch

from recbole_mql import distributed
from recbole_mql.compat import load_own_checkpoint


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


class BestEpochMixin:
    """``best_epoch``: the epoch of the checkpoint kept (None before the first save)."""

    best_epoch = None

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self.best_epoch = epoch
        return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)


class OwnCheckpointMixin:
    """Resume and evaluate from the trainer's own checkpoints with the full unpickler."""

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


class RecBoleCompatMixin(DistributedMixin, BestEpochMixin, OwnCheckpointMixin):
    """The three mixins above, in front of a RecBole trainer."""


@functools.lru_cache(maxsize=None)
def with_recbole_compat(base):
    """``base`` with :class:`RecBoleCompatMixin` in front (one class per base, so isinstance holds)."""
    return type(base.__name__, (RecBoleCompatMixin, base), {})
