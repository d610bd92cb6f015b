"""Training samples of the generation tasks, batched by task and bucketed by history length.

:class:`TaskSamples` reads RecBole's augmented training set (fine-tuning); :class:`StreamingTaskSamples`
reads a :class:`~recbole_mql.data.sequence_store.SequenceStore` and plans an epoch as sample positions,
materialising each batch only when it is consumed (pre-training over many domains).
"""

from dataclasses import dataclass

import torch

from recbole_mql.data.item_codes import real_items
from recbole_mql.data.tasks import TASKS


@dataclass
class TaskBatch:
    """One micro-batch of a single task. ``history``/``lengths`` are None for item tasks.
    ``max_kept``: the longest kept history of the batch (at most ``max_his_len``), known on the host
    when the epoch is planned, so that tokenising the batch needs no read back from the device."""

    task: str
    target: torch.Tensor  # [batch] item ids
    history: torch.Tensor = None  # [batch, max_len]
    lengths: torch.Tensor = None  # [batch]
    source: int = 0  # which dataset (pre-training reads several)
    max_kept: int = None

    def __len__(self):
        return self.target.shape[0]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TaskBatch(self.task, move(self.target), move(self.history), move(self.lengths), self.source,
                         self.max_kept)


@dataclass
class PlannedBatch:
    """A planned micro-batch of :class:`TaskSamples`: sample positions (sequence tasks) or item ids
    (item tasks) on the host; :meth:`TaskSamples.epoch_batches` gathers the tensors on the device."""

    task: str
    refs: torch.Tensor
    max_kept: int
    source: int = 0

    def __len__(self):
        return self.refs.shape[0]


class TaskSamples:
    """Every prefix of every training sequence (RecBole's augmented train set) for the sequence
    tasks, and every item once per epoch for the alignment tasks (as the authors do).

    The epoch is planned on the host (positions only, from seeded generators); the samples'
    tensors live on the training device (copied there once), and each epoch's batches are gathered
    there by index after one copy of the epoch's positions: no Python work per sample and no copy
    per batch on a GPU, the same batches on every device for a seed.
    """

    def __init__(self, dataset, tasks, max_his_len, source=0, bucket_chunk=64, mixing="task"):
        feat = dataset.inter_feat
        list_field = dataset.iid_field + dataset.config["LIST_SUFFIX"]
        self.history = feat[list_field]
        self.lengths = feat[dataset.config["ITEM_LIST_LENGTH_FIELD"]]
        self.target = feat[dataset.iid_field]
        self.items = real_items(dataset.item_num)
        self.tasks = list(tasks)
        self.max_his_len = max_his_len
        self.bucket_chunk = bucket_chunk
        self.source = source
        self.mixing = check_mixing(mixing)
        self._resident = {}  # device -> (history, lengths, target) there

    def sequence_refs(self):
        return torch.arange(len(self.target))

    def kept_lengths(self, idx):
        return self.lengths[idx].clamp(max=self.max_his_len)

    def sequence_batch(self, task, idx):
        return PlannedBatch(task, idx, int(self.kept_lengths(idx).max()) if len(idx) else 0, self.source)

    def item_batch(self, task, items):
        return PlannedBatch(task, items, 1, self.source)

    def epoch_batches(self, epoch, batch_size, seed, device="cpu"):
        """The epoch's micro-batches on ``device``, in a shuffled order that depends only on (seed, epoch).

        Sequence samples are sorted by history length inside chunks of ``bucket_chunk`` batches,
        so a batch pads to a similar length (padding to the longest wastes most of an epoch).
        With ``mixing="mixed"`` a batch mixes the tasks' samples (see :func:`plan_mixed_epoch`).
        """
        if self.mixing == "mixed":
            plan = plan_mixed_epoch(self, epoch, batch_size, seed)
        else:
            def sequence_batches(task, gen):
                order = torch.randperm(len(self.target), generator=gen)
                for idx in bucketed(order, self.kept_lengths, batch_size, self.bucket_chunk):
                    yield self.sequence_batch(task, idx)

            plan = plan_epoch(self, epoch, batch_size, seed, sequence_batches)
        return self.gather(plan, torch.device(device))

    def resident(self, device):
        """(history, lengths, target) on ``device``, copied there once."""
        key = str(device)
        if key not in self._resident:
            self._resident[key] = tuple(t.to(device) for t in (self.history, self.lengths, self.target))
        return self._resident[key]

    def gather(self, plan, device):
        """``plan``'s :class:`PlannedBatch` es (alone or in a :class:`MixedBatch`) as :class:`TaskBatch` es
        gathered on ``device``; the positions of the whole epoch are copied there at once."""
        leaves = [p for b in plan for p in (b.parts if isinstance(b, MixedBatch) else [b])]
        if not leaves:
            return []
        refs = torch.cat([p.refs for p in leaves]).to(device, non_blocking=True).split([len(p) for p in leaves])
        history, lengths, target = self.resident(device)
        made = {}
        for p, idx in zip(leaves, refs):
            if TASKS[p.task].item_task:
                made[id(p)] = TaskBatch(p.task, idx, source=p.source, max_kept=p.max_kept)
            else:
                made[id(p)] = TaskBatch(p.task, target[idx], history[idx], lengths[idx], p.source, p.max_kept)
        return [MixedBatch([made[id(p)] for p in b.parts]) if isinstance(b, MixedBatch) else made[id(b)]
                for b in plan]

    def num_samples(self):
        return sum(len(self.items) if TASKS[t].item_task else len(self.target) for t in self.tasks)


class LazyTaskBatch:
    """A planned micro-batch of a sequence task: target positions in a SequenceStore, no tensors yet.

    ``to(device)`` (what the trainer calls first) materialises it into a :class:`TaskBatch`; the
    histories exist only while that batch is used, so an epoch's plan costs ~4 bytes a sample.
    """

    __slots__ = ("task", "positions", "store", "max_his_len", "source")

    def __init__(self, task, positions, store, max_his_len, source=0):
        self.task, self.positions, self.store = task, positions, store
        self.max_his_len, self.source = max_his_len, source

    def __len__(self):
        return self.positions.shape[0]

    def materialise(self):
        """The :class:`TaskBatch`: history [b, <= max_his_len] (0-padded right), lengths [b], target [b]."""
        history, lengths, target = self.store.samples(self.positions, self.max_his_len)
        return TaskBatch(self.task, target, history, lengths, self.source)

    def to(self, device):
        return self.materialise().to(device)


class StreamingTaskSamples:
    """:class:`TaskSamples`' interface over a :class:`SequenceStore`: the sequence tasks read the
    store's ``train_index`` (or ``valid_index`` with ``split="valid"``) samples, the item tasks every
    item once per epoch. Epoch plans hold sample positions only (see :class:`LazyTaskBatch`)."""

    def __init__(self, store, tasks, max_his_len, source=0, bucket_chunk=64, split="train", mixing="task"):
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
        self.store = store
        self.positions = store.train_index if split == "train" else store.valid_index
        self.items = real_items(store.item_num)
        self.tasks = list(tasks)
        self.max_his_len = max_his_len
        self.bucket_chunk = bucket_chunk
        self.source = source
        self.mixing = check_mixing(mixing)

    def sequence_refs(self):
        return self.positions.long()

    def kept_lengths(self, idx):
        return self.store.kept_lengths(idx, self.max_his_len)

    def sequence_batch(self, task, idx):
        return LazyTaskBatch(task, idx, self.store, self.max_his_len, self.source)

    def item_batch(self, task, items):
        return TaskBatch(task, items, source=self.source, max_kept=1)

    def epoch_batches(self, epoch, batch_size, seed, device=None):
        """The epoch's micro-batches (lazy for sequence tasks), shuffled by (seed, epoch) only,
        bucketed by kept history length as :meth:`TaskSamples.epoch_batches` does. They stay on the
        host: each is materialised when the trainer moves it to its ``device``."""
        if self.mixing == "mixed":
            return plan_mixed_epoch(self, epoch, batch_size, seed)

        def sequence_batches(task, gen):
            n = len(self.positions)
            order = self.positions[torch.randperm(n, generator=gen, dtype=torch.int32 if n < 2 ** 31 else torch.int64)]
            kept = lambda idx: self.store.kept_lengths(idx, self.max_his_len)  # noqa: E731
            for idx in bucketed(order, kept, batch_size, self.bucket_chunk):
                yield LazyTaskBatch(task, idx, self.store, self.max_his_len, self.source)

        return plan_epoch(self, epoch, batch_size, seed, sequence_batches)

    def num_samples(self):
        return sum(len(self.items) if TASKS[t].item_task else len(self.positions) for t in self.tasks)


def plan_epoch(samples, epoch, batch_size, seed, sequence_batches):
    """The micro-batches of every task of ``samples`` for one epoch, shuffled by (seed, epoch) only:
    item tasks batch every item once; ``sequence_batches(task, gen)`` yields a sequence task's batches."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    batches = []
    for task in samples.tasks:
        if TASKS[task].item_task:
            order = samples.items[torch.randperm(len(samples.items), generator=gen)]
            batches += [samples.item_batch(task, chunk) for chunk in order.split(batch_size)]
        else:
            batches += list(sequence_batches(task, gen))
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


BATCH_MIXING = ("task", "mixed")


def check_mixing(mixing):
    if mixing not in BATCH_MIXING:
        raise ValueError(f"batch_mixing={mixing!r}: use 'task' (one task a batch) or 'mixed' (the authors' "
                         f"random batches over all tasks' samples).")
    return mixing


class MixedBatch:
    """One micro-batch of samples of several tasks: one :class:`TaskBatch` (or lazy batch) a task."""

    def __init__(self, parts):
        self.parts = parts
        self.source = parts[0].source

    def __len__(self):
        return sum(len(p) for p in self.parts)

    def to(self, device):
        return MixedBatch([p.to(device) for p in self.parts])


def plan_mixed_epoch(samples, epoch, batch_size, seed):
    """The authors' batches: every sample of every task once, drawn at random into batches (each
    batch mixing the tasks), sorted by kept history length inside chunks of ``bucket_chunk``
    batches as :func:`bucketed` does (an item task's input is one item). Depends on (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    task_of, ref_of, length_of = [], [], []
    for t, task in enumerate(samples.tasks):
        if TASKS[task].item_task:
            refs, lengths = samples.items, torch.ones(len(samples.items), dtype=torch.long)
        else:
            refs = samples.sequence_refs()
            lengths = samples.kept_lengths(refs).long()
        task_of.append(torch.full((len(refs),), t, dtype=torch.long))
        ref_of.append(refs.long())
        length_of.append(lengths)
    task_of, ref_of, length_of = torch.cat(task_of), torch.cat(ref_of), torch.cat(length_of)
    batches = []
    for idx in bucketed(torch.randperm(len(ref_of), generator=gen), lambda i: length_of[i], batch_size,
                        samples.bucket_chunk):
        parts = []
        for t in task_of[idx].unique().tolist():
            task, refs = samples.tasks[t], ref_of[idx[task_of[idx] == t]]
            parts.append(samples.item_batch(task, refs) if TASKS[task].item_task
                         else samples.sequence_batch(task, refs))
        batches.append(MixedBatch(parts))
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


def bucketed(order, kept_lengths, batch_size, bucket_chunk):
    """Split ``order`` [n] into batches of ``batch_size``, each chunk of ``bucket_chunk`` batches
    first sorted (stably) by ``kept_lengths(chunk)`` so a batch pads to a similar history length."""
    for chunk in order.split(batch_size * bucket_chunk):
        yield from chunk[kept_lengths(chunk).argsort(stable=True)].split(batch_size)
