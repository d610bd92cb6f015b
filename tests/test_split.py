"""The harness's leave-one-out split reproduces the MQL4GRec authors' split files exactly."""

import os

import pytest

from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from tests.conftest import quiet_config, source_dir


def read_split(path):
    rows = {}
    with open(path) as f:
        next(f)
        for line in f:
            user, history, target = line.rstrip("\n").split("\t")
            rows.setdefault(user, []).append((history.split(), target))
    return rows


def harness_rows(data, loader):
    ds = loader._dataset
    uid, iid = ds.uid_field, ds.iid_field
    users = ds.field2id_token[uid][ds.inter_feat[uid].numpy()]
    targets = ds.field2id_token[iid][ds.inter_feat[iid].numpy()]
    lists = ds.inter_feat[iid + ds.config["LIST_SUFFIX"]].numpy()
    lengths = ds.inter_feat[ds.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    rows = {}
    for user, target, seq, n in zip(users, targets, lists, lengths):
        rows.setdefault(str(user), []).append(([str(t) for t in ds.field2id_token[iid][seq[:n]]], str(target)))
    return rows


@pytest.fixture(scope="module")
def split(instruments_atomic, tmp_path_factory):
    config = Config("SASRec", "Instruments", config_dict=quiet_config(
        data_path=instruments_atomic, checkpoint_dir=str(tmp_path_factory.mktemp("saved"))))
    return load_data(config)


@pytest.mark.parametrize("phase,index", [("valid", 2), ("test", 3)])
def test_eval_split_equals_authors(split, phase, index):
    expected = read_split(os.path.join(source_dir("Instruments"), f"Instruments.{phase}.inter"))
    got = harness_rows(split[0], split[index])
    assert len(got) == len(expected) == 17112
    assert got == expected


def test_train_samples_equal_authors(split):
    expected = read_split(os.path.join(source_dir("Instruments"), "Instruments.train.inter"))
    got = harness_rows(split[0], split[1])
    assert sum(map(len, got.values())) == sum(map(len, expected.values()))
    assert {u: sorted(r) for u, r in got.items()} == {u: sorted(r) for u, r in expected.items()}
