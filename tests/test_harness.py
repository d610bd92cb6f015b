"""The harness: plugin-first look-up, property layering, CLI errors, RecBole models end to end."""

import subprocess
import sys

import pytest

from recbole_mql.cli import main as cli_main
from recbole_mql.compat import import_recbole_module
from recbole_mql.config import Config, UnknownConfigKeyError
from recbole_mql.quick_start import run_recbole_mql
from recbole_mql.utils import UnknownModelError, get_model
from tests.conftest import REPO, fixture_dir, quiet_config


def test_unknown_model_is_one_clear_error():
    with pytest.raises(UnknownModelError, match="Unknown model 'SASrecc'.*Did you mean SASRec"):
        get_model("SASrecc")


def test_recbole_models_are_found():
    package = import_recbole_module("recbole.model.sequential_recommender")
    assert get_model("SASRec") is package.SASRec and get_model("BERT4Rec") is package.BERT4Rec


def test_recbole_models_leave_autograd_anomaly_mode_off():
    """RecBole's sine.py switches anomaly mode on at import (every backward pass ~2x slower after)."""
    code = ("import torch; from recbole_mql.utils import get_model; "
            "[get_model(m) for m in ('SASRec', 'BERT4Rec', 'SINE')]; print(torch.is_anomaly_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_properties_layering(instruments_small_atomic):
    config = Config("SASRec", "Instruments", config_dict=quiet_config(data_path=instruments_small_atomic),
                    cmd_args={"topk": "[1,5,10,20]"})
    assert config["valid_metric"] == "NDCG@10"  # properties/overall.yaml over RecBole's MRR@10
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["topk"] == [1, 5, 10, 20]  # command line over files
    assert config["train_neg_sample_args"]["distribution"] == "none"  # SASRec's CE loss takes no negatives


def test_unknown_config_key_names_close_match():
    with pytest.raises(UnknownConfigKeyError, match="'learning_rat'.*learning_rate"):
        Config("SASRec", "Instruments", cmd_args={"learning_rat": "0.1"})


def test_cli_errors_are_one_line(capsys):
    assert cli_main(["--model=NoSuchModel", "--dataset=Instruments"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown model 'NoSuchModel'" in err[0]
    assert cli_main(["--model=SASRec", "--dataset=NoSuchData", "--data_path=/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Dataset 'NoSuchData' not found" in err[0]


def test_sasrec_end_to_end_on_real_subset(tmp_path):
    """RecBole's own SASRec runs through the plugin's quick start and checkpoint loading."""
    result = run_recbole_mql("SASRec", "Instruments", config_dict=quiet_config(
        data_path=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "saved"), source=fixture_dir("Instruments"),
        epochs=2, train_batch_size=512, hidden_size=32, inner_size=64, eval_batch_size=512))
    test = result["test_result"]
    assert set(test) == {"hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"}
    assert 0 <= test["ndcg@10"] <= test["hit@10"] and test["hit@1"] <= test["hit@5"] <= test["hit@10"]
    # two epochs of SASRec beat a random ranking of the slice's 2,923 items (hit@10 ~ 0.0034) by far
    assert test["hit@10"] > 0.01
    assert result["best_epoch"] in (0, 1)
