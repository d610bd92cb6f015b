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
    """One micro-batch of a single task. ``history``/``lengths`` are None for item tasks."""

    task: str
    target: torch.Tensor  # [batch] item ids
    history: torch.Tensor = None  # [batch, max_len]
    lengths: torch.Tensor = None  # [batch]
    source: int = 0  # which dataset (pre-training reads several)

    def __len__(self):
        return self.target.shape[0]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TaskBatch(self.task, move(self.target), move(self.history), move(self.lengths), self.source)


class TaskSamples:
    """Every prefix of every training sequence (RecBole's augmented train set) for the sequence
    tasks, and every item once per epoch for the alignment tasks (as the authors do)."""

    def __init__(self, dataset, tasks, max_his_len, source=0, bucket_chunk=64):
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

    def epoch_batches(self, epoch, batch_size, seed):
        """The epoch's micro-batches, in a shuffled order that depends only on (seed, epoch).

        Sequence samples are sorted by history length inside chunks of ``bucket_chunk`` batches,
        so a batch pads to a similar length (padding to the longest wastes most of an epoch).
        """
        def sequence_batches(task, gen):
            order = torch.randperm(len(self.target), generator=gen)
            kept = lambda idx: self.lengths[idx].clamp(max=self.max_his_len)  # noqa: E731
            for idx in bucketed(order, kept, batch_size, self.bucket_chunk):
                yield TaskBatch(task, self.target[idx], self.history[idx], self.lengths[idx], self.source)

        return plan_epoch(self, epoch, batch_size, seed, sequence_batches)

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

    def __init__(self, store, tasks, max_his_len, source=0, bucket_chunk=64, split="train"):
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
        self.store = store
        self.positions = store.train_index if split == "train" else store.valid_index
        self.items = real_items(store.item_num)
        self.tasks = list(tasks)
        self.max_his_len = max_his_len
        self.bucket_chunk = bucket_chunk
        self.source = source

    def epoch_batches(self, epoch, batch_size, seed):
        """The epoch's micro-batches (lazy for sequence tasks), shuffled by (seed, epoch) only,
        bucketed by kept history length as :meth:`TaskSamples.epoch_batches` does."""
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
            batches += [TaskBatch(task, chunk, source=samples.source) for chunk in order.split(batch_size)]
        else:
            batches += list(sequence_batches(task, gen))
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


def bucketed(order, kept_lengths, batch_size, bucket_chunk):
    """Split ``order`` [n] into batches of ``batch_size``, each chunk of ``bucket_chunk`` batches
    first sorted (stably) by ``kept_lengths(chunk)`` so a batch pads to a similar history length."""
    for chunk in order.split(batch_size * bucket_chunk):
        yield from chunk[kept_lengths(chunk).argsort(stable=True)].split(batch_size)
