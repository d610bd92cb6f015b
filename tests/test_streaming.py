"""Streaming pre-training samples: the compact sequence store reproduces RecBole's split, and its
epoch plans are deterministic and lazy. (Pre-training itself runs in test_mql4grec.)"""

import json
import os

import pytest
import torch

from dataset_prep.atomic import convert
from recbole_mql.data.sequence_store import SequenceStore, compact_dataset
from recbole_mql.data.task_samples import LazyTaskBatch, StreamingTaskSamples, TaskBatch, TaskSamples
from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from recbole_mql.utils import create_dataset, get_model
from tests.conftest import SMALL_T5, quiet_config, subset_source

MAX_HIS = 20


def cut_sequences(folder, name, lengths):
    """Cut the i-th user's real sequence to its first ``lengths[i % len(lengths)]`` items (short users
    exercise RecBole's leave-one-out edge cases: no validation sample under 4 items)."""
    path = os.path.join(folder, f"{name}.inter.json")
    with open(path) as f:
        sequences = json.load(f)
    cut = {u: s[:lengths[i % len(lengths)]] for i, (u, s) in enumerate(sequences.items())}
    with open(path, "w") as f:
        json.dump(cut, f)


@pytest.fixture(scope="module", params=["full", "short"])
def data(request, tmp_path_factory):
    """(config, RecBole's (train, valid) loaders, store, compacted dataset) on a real Instruments subset;
    ``short`` cuts the sequences to 1..6 and 60 items."""
    root = tmp_path_factory.mktemp(f"stream_{request.param}")
    source = subset_source("Instruments", 400, str(root / "src"))
    if request.param == "short":
        cut_sequences(source, "Instruments", [1, 2, 3, 4, 5, 6, 60])
    convert("Instruments", source, str(root / "data"))
    config = Config("MQL4GRec", "Instruments", config_dict=quiet_config(
        data_path=str(root / "data"), checkpoint_dir=str(root / "saved"), **SMALL_T5))
    _, train, valid, _ = load_data(config)
    dataset = create_dataset(config)
    store = compact_dataset(dataset)
    return config, (train, valid), store, dataset


def rows(users, history, lengths, target):
    """Sorted (user, target, last kept history items, kept length) of a batch of samples."""
    keep = lengths.clamp(max=MAX_HIS)
    return sorted((u, t, tuple(h[n - k:n]), k) for u, t, h, n, k in
                  zip(users.tolist(), target.tolist(), history.tolist(), lengths.tolist(), keep.tolist()))


def store_rows(store, positions):
    history, lengths, target = store.samples(positions, MAX_HIS)
    users = torch.searchsorted(store.offsets, positions.long(), right=True) - 1
    return rows(users, history, lengths, target)


def test_train_samples_equal_recbole(data):
    config, (train, _), store, _ = data
    recbole = TaskSamples(train._dataset, ["seqrec"], MAX_HIS)
    users = train._dataset.inter_feat[config["USER_ID_FIELD"]]
    assert len(store.train_index) == len(recbole.target)
    assert store_rows(store, store.train_index) == rows(users, recbole.history, recbole.lengths, recbole.target)


def test_valid_samples_equal_recbole_and_encode_alike(data):
    config, (_, valid), store, dataset = data
    feat = valid._dataset.inter_feat
    users = feat[config["USER_ID_FIELD"]]
    history, lengths, target = feat["item_id_list"], feat["item_length"], feat["item_id"]
    assert store_rows(store, store.valid_index) == rows(users, history, lengths, target)
    # the model reads the same tokens from both layouts (store: last 20 items, right-padded)
    net = get_model("MQL4GRec")(config, dataset)  # built from the compacted, un-split dataset
    reference = get_model("MQL4GRec")(config, valid._dataset)
    assert torch.equal(net.tokens_text, reference.tokens_text) and torch.equal(net.tokens_image, reference.tokens_image)
    order = users.argsort()  # the store lists users in id order
    ours = store.samples(store.valid_index, MAX_HIS)
    for task in ("seqrec", "seqimage"):
        theirs = net.task_inputs(task, history[order], lengths[order], target[order])
        for a, b in zip(net.task_inputs(task, *ours), theirs):
            assert torch.equal(a, b)


def test_store_is_compact_and_refuses_augmented_data(data):
    _, (train, _), store, dataset = data
    assert dataset.inter_feat is None and store.items.dtype == torch.int32
    assert store.items.shape[0] == int(store.offsets[-1])
    with pytest.raises(ValueError, match="already augmented"):
        SequenceStore.from_dataset(train._dataset)


def materialised(batches):
    out = []
    for b in batches:
        b = b.to("cpu")
        out.append((b.task, b.target, b.history, b.lengths))
    return out


def same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and all((s is None and t is None) or (s is not None and t is not None and torch.equal(s, t))
                             for s, t in zip(x[1:], y[1:])) for x, y in zip(a, b))


def test_epochs_deterministic_lazy_and_complete(data):
    _, _, store, _ = data
    samples = StreamingTaskSamples(store, ["seqrec", "seqimage", "item2image"], MAX_HIS, source=1)
    plan = samples.epoch_batches(1, 64, seed=7)
    assert all(isinstance(b, LazyTaskBatch) for b in plan if b.task != "item2image")
    assert all(isinstance(b.to("cpu"), TaskBatch) and b.source == 1 for b in plan)
    first, again, other = (materialised(samples.epoch_batches(e, 64, seed=7)) for e in (1, 1, 2))
    assert same(first, again) and not same(first, other)
    assert sum(len(b) for b in plan) == samples.num_samples()
    for task in ("seqrec", "seqimage"):
        seen = torch.cat([b.positions for b in plan if b.task == task]).long().sort().values
        assert torch.equal(seen, store.train_index.long().sort().values)
    items = torch.cat([b.target for b in plan if b.task == "item2image"]).sort().values
    assert torch.equal(items, torch.arange(1, store.item_num))
