"""Trainer of the generative models: AdamW, warm-up then cosine, token-normalised gradient
accumulation, bf16 autocast, early stopping on a decoded validation metric, atomic checkpoints."""

import contextlib
import math
import os
import time

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from recbole.utils import dict2str, early_stopping, set_color
from tqdm import tqdm

from dataset_prep.io import atomic_copy

from recbole_mql import distributed
from recbole_mql.checkpoint import (CheckpointError, CheckpointMismatch, load_checkpoint_file, load_weights,
                                    save_checkpoint)
from recbole_mql.data.task_samples import MixedBatch, TaskSamples
from recbole_mql.model.mql4grec import IGNORE, merge_padded
from recbole_mql.precision import resolve_autocast, tf32_matmuls
from recbole_mql.trainer.recbole_compat import (ENDED_BY_BUDGET, ENDED_BY_EARLY_STOPPING, ENDED_BY_EPOCHS,
                                               BudgetEnded, RecBoleCompatMixin, TimeBudgetMixin)


LR_SCHEDULES = ("cosine", "constant")


def warmup_schedule(optimizer, total_steps, warmup_steps, after="cosine"):
    """Linear warm-up to the base learning rate, then cosine decay to 0 (fine-tuning) or a constant
    rate (the authors' pre-training)."""
    if after not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={after!r}: use one of {', '.join(LR_SCHEDULES)}.")

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if after == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# strict: an item is a hit only when it is the target (a collision level tells items apart);
# shared_code: a predicted code counts for every item that has it (the authors' evaluation)
COLLISION_SCORING = ("strict", "shared_code")


def scores_by_shared_code(scores, positive_i, shared):
    """The authors' collision scoring on a full-sort batch: ``scores`` [users, items] and targets
    ``positive_i`` move to each item's representative ``shared`` [items] (the first item with its
    code), the representative taking its group's best score, so the group's code is one entry of
    the ranking and a hit for any of its items."""
    shared = shared.to(scores.device)
    merged = torch.full_like(scores, float("-inf"))
    merged.scatter_reduce_(1, shared.expand_as(scores), scores, reduce="amax")
    return merged, shared[positive_i.to(scores.device)].to(positive_i.device)


def parameter_groups(model):
    """(decayed, not decayed) parameters: biases and normalisation weights take no weight decay."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue  # tied weights are listed once
            seen.add(id(param))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    return decay, no_decay


class GenerativeTrainer(RecBoleCompatMixin, TimeBudgetMixin, Trainer):
    """RecBole ``Trainer`` whose epoch is the model's task batches instead of RecBole's batches.

    On a GPU the loop does not wait for the device: the epoch's samples are gathered there by index
    (:class:`~recbole_mql.data.task_samples.TaskSamples`), batch widths are known on the host, the
    loss and token counts are summed on the device and read every ``LOG_EVERY`` steps (progress
    bar) and at the end of the epoch; AdamW is fused and float32 matrix products use TF32 while
    training (decoding stays in full float32).
    """

    LOG_EVERY = 50  # optimizer steps between reads of the running loss (a device sync), progress bar only

    def __init__(self, config, model):
        super().__init__(config, model)
        self.accumulation = config["gradient_accumulation_steps"]
        self.autocast, why = resolve_autocast(config["autocast_dtype"], self.device)
        self.logger.info(f"training precision: {why}")
        self.collision_scoring = config["collision_scoring"] or "strict"
        if self.collision_scoring not in COLLISION_SCORING:
            raise ValueError(f"collision_scoring={self.collision_scoring!r}: use one of {', '.join(COLLISION_SCORING)}.")
        self.scheduler = None
        self.samples = None
        self._pending_scheduler_state = None
        self._valid_subset = None
        self._planned = None  # (epoch, its batches) planned ahead by _prepare_schedule
        name = f"{config['model']}-{config['dataset']}"
        self.last_model_file = os.path.join(self.checkpoint_dir, f"{name}-last.pth")
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.ddp, self._shards = None, {}
        if self.world > 1:
            # every rank trains on its rows of each batch; DDP averages the gradients
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
            self.evaluator = GatheredEvaluator(self.evaluator, self.device)

    def _build_optimizer(self, **kwargs):
        """AdamW as the HF Trainer builds it: weight decay on weights, none on biases and LayerNorm;
        fused into one kernel a step on a GPU."""
        decay, no_decay = parameter_groups(self.model)
        fused = {"fused": True} if self.config["device"].type == "cuda" else {}
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.config["weight_decay"]},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.config["learning_rate"], **fused)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train with early stopping on ``valid_metric`` (decoded); returns (best score, best result).

        Keeps the best checkpoint (``saved_model_file``) and the last one (``<model>-<dataset>-last.pth``,
        for ``--resume=last``), both written atomically. A resumed run that had finished (stopped early,
        or no epoch left) trains nothing and writes nothing: the test reads its best checkpoint as it is.
        """
        if self._resumed and (self.stopped_early or self.start_epoch >= self.epochs):
            why = "stopped early" if self.stopped_early else "no epoch left"
            self.ended_by = ENDED_BY_EARLY_STOPPING if self.stopped_early else ENDED_BY_EPOCHS
            self.logger.info(f"The resumed run had finished ({why}, best epoch {self.best_epoch}): testing "
                             f"{self.saved_model_file} as it is.")
            return self.best_valid_score, self.best_valid_result
        self._prepare_schedule(train_data)
        self._fit_start = time.time()
        self._budget_start()
        self.ended_by = ENDED_BY_EPOCHS
        for epoch in range(self.start_epoch, self.epochs):
            validates = bool(valid_data) and self.eval_step > 0 and (epoch + 1) % self.eval_step == 0
            try:
                self._check_budget(epoch, validates)
            except BudgetEnded as ended:
                self.logger.info(str(ended))
                self.ended_by = ENDED_BY_BUDGET
                break
            start = time.time()
            loss = self._train_epoch(train_data, epoch, show_progress=show_progress)
            self._record_epoch(train_seconds=time.time() - start)
            self.train_loss_dict[epoch] = loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch, start, time.time(), loss))
            stop = False
            if not valid_data or self.eval_step <= 0:
                if saved:
                    self._save_checkpoint(epoch, verbose=verbose)
            elif validates:
                valid_start = time.time()
                stop = self._validate(valid_data, epoch, saved, verbose, show_progress)
                self._record_epoch(valid_seconds=time.time() - valid_start)
            self.stopped_early = stop  # the last state says whether the run is over
            if self.rank == 0:
                save_checkpoint(self._checkpoint_state(epoch), self.last_model_file)
            if callback_fn:
                callback_fn(epoch, self.best_valid_score)
            if stop:
                self.ended_by = ENDED_BY_EARLY_STOPPING
                self.logger.info(f"Finished training, best eval result in epoch {self.best_epoch}")
                break
        distributed.barrier()  # rank 0's checkpoints are on disk before any rank loads the best one
        return self.best_valid_score, self.best_valid_result

    def _validate(self, valid_data, epoch, saved, verbose, show_progress):
        """One validation pass; saves on improvement; returns whether to stop early."""
        start = time.time()
        score, result = self._valid_epoch(valid_data, show_progress=show_progress)
        self.best_valid_score, self.cur_step, stop, improved = early_stopping(
            score, self.best_valid_score, self.cur_step, max_step=self.stopping_step, bigger=self.valid_metric_bigger)
        if verbose:
            self.logger.info(set_color("epoch %d evaluating", "green") % epoch
                             + f" [time: {time.time() - start:.2f}s, valid_score: {score:f}]")
            self.logger.info(set_color("valid result", "blue") + ": \n" + dict2str(result))
        if improved:
            self.best_valid_result = result
            if saved:
                self._save_checkpoint(epoch, verbose=verbose)
        return stop

    def _build_samples(self, train_data):
        return [TaskSamples(train_data._dataset, self.model.tasks, self.model.max_his_len,
                            mixing=self.config["batch_mixing"] or "task")]

    def _epoch_batches(self, epoch):
        """This epoch's micro-batches of every source, shuffled together (depends on seed and epoch only).
        The first epoch's, planned when the schedule was sized, are used once as they are."""
        if self._planned is not None and self._planned[0] == epoch:
            batches, self._planned = self._planned[1], None
            return batches
        seed, batch_size = self.config["seed"], self.config["train_batch_size"]
        batches = [b for samples in self.samples for b in samples.epoch_batches(epoch, batch_size, seed, self.device)]
        if len(self.samples) > 1:
            order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + epoch))
            batches = [batches[i] for i in order]
        return batches

    def _prepare_schedule(self, train_data):
        model = self.model
        self.samples = self._build_samples(train_data)
        batch_size = self.config["train_batch_size"]
        first = self._epoch_batches(self.start_epoch)  # every epoch has as many batches
        self._planned = (self.start_epoch, first)
        steps = math.ceil(len(first) / self.accumulation)
        total = steps * self.epochs
        warmup = int(self.config["warmup_ratio"] * total)
        self.scheduler = warmup_schedule(self.optimizer, total, warmup, self.config["lr_schedule"] or "cosine")
        if self._pending_scheduler_state is not None:
            self.scheduler.load_state_dict(self._pending_scheduler_state)
            # a new LambdaLR has just written lr(step 0) into the optimizer: restore the resumed one
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr
        self.logger.info(
            f"{sum(s.num_samples() for s in self.samples)} training samples an epoch (tasks {model.tasks}), {steps} optimizer "
            f"steps of {batch_size} x {self.accumulation}; warm-up {warmup} of {total} steps"
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        batches = self._epoch_batches(epoch_idx)
        groups = [batches[i:i + self.accumulation] for i in range(0, len(batches), self.accumulation)]
        progress = tqdm(groups, ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink")) if show_progress else groups
        # summed where the model runs, read back only every LOG_EVERY steps and at the end: no sync a step
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        total_tokens = torch.zeros((), dtype=torch.long, device=self.device)
        start, seen = time.time(), 0
        with tf32_matmuls(self.device):
            for step, group in enumerate(progress):
                inputs = self._group_inputs(group, epoch_idx, step)
                group_tokens = sum((inp[2] != IGNORE).sum() for inp in inputs)
                self.optimizer.zero_grad()
                for i, inp in enumerate(inputs):
                    rows, weight = self._my_rows(inp)
                    # DDP all-reduces the gradients once per accumulated batch, on its last micro-batch
                    sync = self.ddp is None or i == len(inputs) - 1
                    with contextlib.nullcontext() if sync else self.ddp.no_sync():
                        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                            loss_sum = (self.ddp or self.model)(*rows)
                        # normalised over the whole accumulated global batch, not per micro-batch; DDP
                        # averages over ranks, hence x world
                        (loss_sum * (weight * self.world) / group_tokens).backward()
                    total_loss += loss_sum.detach().double() * weight
                total_tokens += group_tokens
                if self.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                seen += sum(len(b) for b in group)
                if epoch_idx == self.start_epoch and step + 1 == min(200, len(groups)):
                    self._log_budget_estimate(start, step + 1, len(groups), epoch_idx)
                if show_progress and (step + 1) % self.LOG_EVERY == 0:
                    progress.set_postfix_str(f"loss {float(total_loss) / max(int(total_tokens), 1):.4f}, "
                                             f"{seen / (time.time() - start):.0f} samples/s")
        total_loss, total_tokens = float(total_loss), int(total_tokens)  # waits for the device's last step
        total_loss = distributed.all_reduce_sum(total_loss, self.device)
        self.logger.info(f"epoch {epoch_idx}: {seen} samples in {time.time() - start:.1f}s "
                         f"({seen / max(time.time() - start, 1e-9):.1f} samples/s), lr {self.scheduler.get_last_lr()[0]:.2e}")
        return total_loss / max(total_tokens, 1)

    def _log_budget_estimate(self, start, steps, of, epoch_idx):
        """What the configured budget will take, from the first ``steps`` steps (once a run)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the queued steps count
        elapsed = time.time() - start
        per_epoch, left = elapsed / steps * of, self.epochs - epoch_idx
        self.logger.info(f"measured {per_epoch / 60:.1f} min an epoch ({steps} of {of} steps in "
                         f"{elapsed:.0f}s): {left} epochs take ~{per_epoch * left / 3600:.1f} h of training "
                         f"+ {left // max(self.eval_step, 1)} validations of {self.config['valid_users'] or 'all'} "
                         f"users (early stopping may end sooner; on a CPU use --protocol=cpu)")

    def _group_inputs(self, group, epoch, step):
        """Tokenised inputs of one accumulated batch. Task inputs may draw random numbers (the fusion
        task's coin): drawn from a generator seeded by (seed, epoch, step), every rank builds the same
        global batch as a single process would, whatever dropout consumed before."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.config["seed"] * 1_000_003 + epoch) * 1_000_003 + step)
            return [self._task_inputs(b) for b in group]

    def _my_rows(self, inputs):
        """(this rank's rows of a global micro-batch, loss weight). A rank left without rows (batch
        smaller than the world) still runs one row with weight 0, as DDP needs every rank's backward."""
        if self.world == 1:
            return inputs, 1.0
        start, end = distributed.shard_range(inputs[0].shape[0], self.rank, self.world)
        if start == end:
            return [t[:1] for t in inputs], 0.0
        return [t[start:end] for t in inputs], 1.0

    def _task_inputs(self, batch):
        batch = batch.to(self.device)
        model = self._source_model(batch.source)
        if isinstance(batch, MixedBatch):
            return merge_padded([model.task_inputs(p.task, p.history, p.lengths, p.target, p.max_kept)
                                 for p in batch.parts])
        return model.task_inputs(batch.task, batch.history, batch.lengths, batch.target, batch.max_kept)

    def _source_model(self, source):
        return self.model

    # ---------------------------------------------------------------------------- validation
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's full-ranking evaluation; with several ranks each decodes a contiguous block of
        the users and :class:`GatheredEvaluator` computes the metrics on all of them."""
        if self.world > 1 and eval_data:
            eval_data = self._user_shard(eval_data)
        return super().evaluate(eval_data, load_best_model=load_best_model, model_file=model_file,
                                show_progress=show_progress and self.rank == 0)

    def _user_shard(self, eval_data):
        key = id(eval_data)
        if key not in self._shards:
            dataset = eval_data._dataset
            start, end = distributed.shard_range(len(dataset), self.rank, self.world)
            if start == end:
                raise ValueError(f"{len(dataset)} users to evaluate cannot be shared by {self.world} processes: "
                                 f"use fewer processes or more valid_users.")
            subset = dataset.copy(dataset.inter_feat[torch.arange(start, end)])
            self._shards[key] = (eval_data, FullSortEvalDataLoader(self.config, subset, eval_data._sampler, shuffle=False))
        return self._shards[key][1]

    def _valid_epoch(self, valid_data, show_progress=False):
        return super()._valid_epoch(self._validation_users(valid_data), show_progress)

    def _full_sort_batch_eval(self, batched_data):
        """RecBole's full-sort batch; with ``collision_scoring: shared_code`` (the authors' scoring)
        every item is replaced by the representative of the items sharing its code, so a predicted
        shared code is a hit for each of them, and counts once in the top-k."""
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.collision_scoring == "shared_code":
            shared = self.model.tokenizer.shared_code_items(self.model.scoring_modality)
            scores, positive_i = scores_by_shared_code(scores, positive_i, shared)
        return interaction, scores, positive_u, positive_i

    def _validation_users(self, valid_data):
        """A fixed, seeded sample of ``valid_users`` users (all when 0), so epochs stay affordable."""
        wanted = self.config["valid_users"] or 0
        dataset = valid_data._dataset
        if not wanted or wanted >= len(dataset):
            return valid_data
        if self._valid_subset is None:
            rng = np.random.default_rng(self.config["seed"])
            index = np.sort(rng.choice(len(dataset), size=wanted, replace=False))
            subset = dataset.copy(dataset.inter_feat[torch.from_numpy(index)])
            self._valid_subset = FullSortEvalDataLoader(self.config, subset, valid_data._sampler, shuffle=False)
            self.logger.info(f"validation decodes a fixed sample of {wanted} of {len(dataset)} users "
                             f"(seed {self.config['seed']}); the test decodes every user")
        return self._valid_subset

    # --------------------------------------------------------------------------- checkpoints
    _resumed = False
    stopped_early = False

    def _checkpoint_state(self, epoch):
        """Every checkpoint's keys (:class:`~recbole_mql.trainer.recbole_compat.CheckpointMixin`) plus what
        resuming needs. The best model's file name is stored, never its path: a resumed run writes into
        its own ``checkpoint_dir`` (a copied run never writes into the original)."""
        return {
            **super()._checkpoint_state(epoch),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "language": self.model.language.state(),
            "best_model_name": os.path.basename(self.saved_model_file),
            "stopped_early": self.stopped_early,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }

    def resume_checkpoint(self, resume_file):
        """Resume from a checkpoint (``--resume=PATH``, or ``--resume=last`` for this model and dataset)."""
        if str(resume_file) in ("True", "last"):
            resume_file = self.last_model_file
        super().resume_checkpoint(resume_file)

    def _restore(self, checkpoint, resume_file):
        default_best = self.saved_model_file
        super()._restore(checkpoint, resume_file)
        self._resumed = True
        self.stopped_early = bool(checkpoint.get("stopped_early"))
        # the best model keeps its name, in this run's checkpoint_dir; never the last-state file
        name = checkpoint.get("best_model_name") or os.path.basename(str(checkpoint.get("best_model_file") or ""))
        self.saved_model_file = os.path.join(self.checkpoint_dir, name) if name else default_best
        if os.path.abspath(self.saved_model_file) == os.path.abspath(self.last_model_file):
            self.saved_model_file = self.last_model_file.replace("-last.pth", "-best.pth")
        self._adopt_best_model(resume_file)
        self._pending_scheduler_state = checkpoint.get("scheduler")
        if checkpoint.get("rng"):
            torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
            np.random.set_state(tuple(checkpoint["rng"]["numpy"]))

    def _adopt_best_model(self, resume_file):
        """A run resumed from another folder (a copy) starts with its best model copied into this run's
        ``checkpoint_dir``; a finished run must have one."""
        beside = os.path.join(os.path.dirname(os.path.abspath(resume_file)), os.path.basename(self.saved_model_file))
        if self.rank == 0 and not os.path.isfile(self.saved_model_file) and os.path.isfile(beside):
            atomic_copy(beside, self.saved_model_file)
            self.logger.info(f"best model so far copied from {beside} to {self.saved_model_file}")
        distributed.barrier()
        if self.best_epoch is not None and not os.path.isfile(self.saved_model_file):
            raise CheckpointError(
                f"{resume_file}: the best checkpoint of that run ({os.path.basename(self.saved_model_file)}, epoch "
                f"{self.best_epoch}) is neither in {self.checkpoint_dir} nor beside it; put it there, or start anew.")

    def load_pretrained(self, path):
        """Start from a pre-trained model's weights (same vocabulary and backbone sizes)."""
        checkpoint = load_checkpoint_file(path, map_location=self.device)
        if "language" not in checkpoint:
            model = (checkpoint.get("config") or {}).get("model")
            raise CheckpointMismatch(
                f"{path} is a checkpoint of {model}, not of a generative model (no quantitative language): pre-trained "
                f"weights come from MQL4GRec or TIGER (--pretrain_datasets writes them).")
        if checkpoint.get("language") != self.model.language.state():
            raise CheckpointMismatch(
                f"{path}: its quantitative language {checkpoint.get('language')} differs from this model's "
                f"{self.model.language.state()}; use the same code_max_levels/codebook_size.")
        load_weights(self.model, checkpoint, path, self.config)
        self.logger.info(f"Fine-tuning from pre-trained {path} (epoch {checkpoint['epoch']})")


class GatheredEvaluator:
    """RecBole's evaluator over the users of every rank: each rank collected its block of users, the
    per-user rows (``rec.*``) are gathered in rank order, so the metrics are a single process's."""

    def __init__(self, evaluator, device):
        self.evaluator, self.device = evaluator, device

    def evaluate(self, struct):
        for key in [k for k in struct._data_dict if k.startswith("rec.")]:
            struct._data_dict[key] = distributed.gather_rows(struct._data_dict[key], self.device)
        return self.evaluator.evaluate(struct)

