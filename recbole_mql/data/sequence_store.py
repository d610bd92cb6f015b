"""Compact per-user item sequences of a dataset; next-item samples are read from them on demand.

RecBole's sequential pipeline (``data_preparation``) augments every prefix of every sequence into
a row of ``MAX_ITEM_LIST_LENGTH`` item ids and as many timestamps (~800 bytes a training sample)
and keeps them for the whole run. Pre-training over several domains needs only each user's items
in time order (4 bytes an interaction) and the positions of the sample targets (4 bytes a sample);
a batch's histories are sliced out of the sequences when the batch is consumed.

The samples are exactly RecBole's leave-one-out split on time order (``eval_args``: split
``LS: valid_and_test``, order ``TO``): see :func:`leave_one_out_counts`.
"""

import numpy as np
import torch


class SequenceStore:
    """Every user's item ids in time order, concatenated, and the sample positions of the split.

    Attributes:
        items: IntTensor [n_interactions], user after user (by RecBole user id), each in time order.
        offsets: LongTensor [n_users + 1]; user ``u``'s items are ``items[offsets[u]:offsets[u + 1]]``.
        train_index / valid_index: [n_samples] flat positions (into ``items``) of the targets of
            the training / validation samples; a sample's history is its user's items before it.
        item_num: RecBole's item count (padding id 0 included), for the item tasks.
    """

    def __init__(self, items, offsets, item_num, dataset_name=""):
        if offsets.dim() != 1 or int(offsets[0]) != 0 or int(offsets[-1]) != items.shape[0]:
            raise ValueError(f"offsets must run from 0 to len(items)={items.shape[0]}; got "
                             f"{int(offsets[0])}..{int(offsets[-1])}")
        self.items, self.offsets = items, offsets
        self.item_num, self.dataset_name = item_num, dataset_name
        counts = offsets[1:] - offsets[:-1]
        train, has_valid = leave_one_out_counts(counts)
        index_dtype = torch.int32 if items.shape[0] < 2 ** 31 else torch.int64
        self.train_index = _ranges(offsets[:-1] + 1, train).to(index_dtype)
        self.valid_index = (offsets[1:] - 2)[has_valid].to(index_dtype)

    @classmethod
    def from_dataset(cls, dataset):
        """The store of a RecBole dataset as ``create_dataset`` returns it, before ``data_preparation``.

        Sorts the interactions stably by (user, timestamp) as RecBole's augmentation does, on the
        float32 timestamps RecBole sorts (equal float32 times keep their file order, as there).
        """
        feat, config = dataset.inter_feat, dataset.config
        columns = list(feat.columns)
        if dataset.iid_field + config["LIST_SUFFIX"] in columns:
            raise ValueError(f"{dataset.dataset_name}: inter_feat is already augmented (data_preparation ran); "
                             f"build the store from create_dataset(config) before data_preparation.")
        missing = [f for f in (dataset.uid_field, dataset.iid_field, dataset.time_field) if f not in columns]
        if missing:
            raise ValueError(f"{dataset.dataset_name}: inter_feat lacks {missing} (load_col['inter'] must load "
                             f"user, item and timestamp fields to order the sequences).")
        users = np.asarray(feat[dataset.uid_field], dtype=np.int64)
        times = np.asarray(feat[dataset.time_field]).astype(np.float32)
        order = np.lexsort((times, users))  # stable: last key first, ties keep file order
        del times
        items = torch.from_numpy(np.asarray(feat[dataset.iid_field])[order].astype(np.int32))
        counts = torch.from_numpy(np.bincount(users, minlength=dataset.user_num))
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        return cls(items, offsets, dataset.item_num, dataset.dataset_name)

    def nbytes(self):
        """Bytes held by the store's tensors."""
        tensors = (self.items, self.offsets, self.train_index, self.valid_index)
        return sum(t.numel() * t.element_size() for t in tensors)

    def kept_lengths(self, positions, max_his_len):
        """LongTensor [b]: history items a model reads for the samples at ``positions`` (<= max_his_len)."""
        positions = positions.long()
        user = torch.searchsorted(self.offsets, positions, right=True) - 1
        return (positions - self.offsets[user]).clamp(max=max_his_len)

    def samples(self, positions, max_his_len):
        """(history, lengths, target) of the samples whose targets sit at ``positions`` [b].

        history: LongTensor [b, max(lengths)], the last ``max_his_len`` items before the target, oldest
            first, left-aligned and 0-padded on the right (the layout of RecBole's ``item_id_list``).
        lengths: LongTensor [b], items in each row (RecBole's ``item_length`` capped at max_his_len:
            ``encode_history`` reads the same last items either way).
        target: LongTensor [b] item ids.
        """
        positions = positions.long()
        lengths = self.kept_lengths(positions, max_his_len)
        width = int(lengths.max()) if positions.numel() else 0
        column = torch.arange(width)
        index = (positions - lengths).unsqueeze(1) + column
        real = column < lengths.unsqueeze(1)
        history = self.items[index.clamp(max=self.items.shape[0] - 1)].long().masked_fill_(~real, 0)
        return history, lengths, self.items[positions].long()


def leave_one_out_counts(counts):
    """(training samples, has a validation sample) per user with ``counts`` interactions [n_users].

    RecBole augments a sequence of n items into n - 1 samples (targets 1..n-1), then its
    leave-one-out hands ``min(2, rows - 1)`` of a user's last rows to test and validation: targets
    1..n-3 train, n-2 validates, n-1 tests for n >= 4; n = 3 trains on 1 and tests on 2 (no
    validation); n = 2 trains on its single sample.
    """
    rows = (counts - 1).clamp(min=0)
    held = (rows - 1).clamp(min=0, max=2)
    return rows - held, held == 2


def _ranges(starts, lengths):
    """LongTensor [sum(lengths)]: ``starts[i] + 0 .. starts[i] + lengths[i] - 1`` for every i, in order."""
    total = int(lengths.sum())
    begin = torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths, output_size=total)
    return begin + torch.arange(total)


def compact_dataset(dataset):
    """A :class:`SequenceStore` of ``dataset`` (before ``data_preparation``); then frees its interactions.

    ``dataset.inter_feat`` is set to None (the store replaces it) and ``item_feat`` becomes the
    tensors ``data_preparation`` would have made, so a model can still be built from the dataset
    (item count, ``text_code`` / ``image_code`` features). The dataset must not be split afterwards.
    """
    store = SequenceStore.from_dataset(dataset)
    dataset.inter_feat = None
    if dataset.item_feat is not None and not hasattr(dataset.item_feat, "interaction"):
        # RecBole's own DataFrame -> Interaction conversion, as in Dataset._change_feat_format
        dataset.item_feat = dataset._dataframe_to_interaction(dataset.item_feat)
    return store
