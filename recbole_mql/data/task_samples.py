"""Training samples of the generation tasks, batched by task and bucketed by history length."""

from dataclasses import dataclass

import torch

from recbole_mql.model.mql4grec import ITEM_TASKS


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
        self.items = torch.arange(1, dataset.item_num)
        self.tasks = list(tasks)
        self.max_his_len = max_his_len
        self.bucket_chunk = bucket_chunk
        self.source = source

    def epoch_batches(self, epoch, batch_size, seed):
        """The epoch's micro-batches, in a shuffled order that depends only on (seed, epoch).

        Sequence samples are sorted by history length inside chunks of ``bucket_chunk`` batches,
        so a batch pads to a similar length (padding to the longest wastes most of an epoch).
        """
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        batches = []
        for task in self.tasks:
            if task in ITEM_TASKS:
                order = self.items[torch.randperm(len(self.items), generator=gen)]
                batches += [TaskBatch(task, chunk, source=self.source) for chunk in order.split(batch_size)]
                continue
            order = torch.randperm(len(self.target), generator=gen)
            for chunk in order.split(batch_size * self.bucket_chunk):
                kept = self.lengths[chunk].clamp(max=self.max_his_len)
                chunk = chunk[kept.argsort(stable=True)]
                for idx in chunk.split(batch_size):
                    batches.append(TaskBatch(task, self.target[idx], self.history[idx], self.lengths[idx], self.source))
        order = torch.randperm(len(batches), generator=gen)
        return [batches[i] for i in order]

    def num_samples(self):
        return sum(len(self.items) if t in ITEM_TASKS else len(self.target) for t in self.tasks)
