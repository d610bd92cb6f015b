"""The harness's leave-one-out split reproduces the MQL4GRec authors' split files exactly."""

import gzip
import os

import pytest

from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from tests.conftest import fixture_dir, quiet_config, source_dir


def read_split(path):
    rows = {}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
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


@pytest.mark.full_data
@pytest.mark.parametrize("phase,index", [("valid", 2), ("test", 3)])
def test_eval_split_equals_authors(split, phase, index):
    expected = read_split(os.path.join(source_dir("Instruments"), f"Instruments.{phase}.inter"))
    got = harness_rows(split[0], split[index])
    assert len(got) == len(expected) == 17112
    assert got == expected


@pytest.mark.full_data
def test_train_samples_equal_authors(split):
    expected = read_split(os.path.join(source_dir("Instruments"), "Instruments.train.inter"))
    got = harness_rows(split[0], split[1])
    assert sum(map(len, got.values())) == sum(map(len, expected.values()))
    assert {u: sorted(r) for u, r in got.items()} == {u: sorted(r) for u, r in expected.items()}


@pytest.fixture(scope="module")
def small_split(instruments_small_atomic, tmp_path_factory):
    config = Config("SASRec", "Instruments", config_dict=quiet_config(
        data_path=instruments_small_atomic, checkpoint_dir=str(tmp_path_factory.mktemp("saved"))))
    return load_data(config)


def test_slice_split_equals_authors(small_split):
    """On the shipped slice (600 users) the split is the authors' rows of those users, in every phase."""
    for phase, index in (("train", 1), ("valid", 2), ("test", 3)):
        expected = read_split(os.path.join(fixture_dir("Instruments"), f"Instruments.{phase}.inter.gz"))
        got = harness_rows(small_split[0], small_split[index])
        assert len(got) == len(expected) == 600, phase
        assert {u: sorted(r) for u, r in got.items()} == {u: sorted(r) for u, r in expected.items()}, phase
