"""What the GPU fast path changed, checked on the CPU: batches planned on the host and gathered by index
on the training device, history widths known on the host, the fusion task written without
data-dependent shapes, the epoch loss summed on the device; and the time budget
(``time_budget_minutes``): it stops at a finished epoch, tests the best checkpoint and resumes."""

import logging
import os

import pytest
import torch
from recbole.utils import init_seed

from dataset_prep.atomic import convert
from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from recbole_mql.data.task_samples import MixedBatch, TaskBatch
from recbole_mql.data.tasks import TASKS
from recbole_mql.model.mql4grec import IGNORE
from recbole_mql.quick_start import run_recbole_mql
from recbole_mql.trainer.recbole_compat import ENDED_BY_BUDGET, ENDED_BY_EARLY_STOPPING, ENDED_BY_EPOCHS
from recbole_mql.utils import get_model, get_trainer
from tests.conftest import SMALL_T5, quiet_config, subset_source
from tests.test_recipe import _contents, _samples

TINY = {**SMALL_T5, "num_layers": 1, "num_decoder_layers": 1, "beam_size": 10, "valid_users": 40,
        "train_batch_size": 128, "eval_batch_size": 256}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    convert("Instruments", subset_source("Instruments", 300, str(root / "src")), str(root / "data"))
    return str(root / "data")


def _parts(batches):
    return [p for b in batches for p in (b.parts if isinstance(b, MixedBatch) else [b])]


@pytest.mark.parametrize("mixing", ["task", "mixed"])
def test_planned_batches_hold_each_sample_once_with_their_longest_history(mixing):
    samples = _samples(mixing)
    batches = samples.epoch_batches(epoch=2, batch_size=32, seed=11, device="cpu")
    assert sorted(_contents(batches)) == sorted(_contents(_samples("task").epoch_batches(2, 32, 11)))
    for part in _parts(batches):
        assert isinstance(part, TaskBatch)
        if TASKS[part.task].item_task:
            assert part.history is None and part.max_kept == 1
        else:  # the host's width is the batch's true longest kept history: never shorter (truncation)
            assert part.max_kept == int(part.lengths.clamp(max=samples.max_his_len).max())
    again = samples.epoch_batches(epoch=2, batch_size=32, seed=11, device=torch.device("cpu"))
    assert _contents(again) == _contents(batches)


def test_samples_are_copied_to_the_device_once():
    samples = _samples("task")
    first = samples.resident("cpu")
    samples.epoch_batches(0, 32, 1)
    samples.epoch_batches(1, 32, 1)
    assert samples.resident(torch.device("cpu")) is first and len(samples._resident) == 1


def _model(data_path, tmp_path, model="MQL4GRec", **extra):
    config = Config(model, "Instruments", config_dict=quiet_config(
        data_path=data_path, checkpoint_dir=str(tmp_path / "saved"), **{**TINY, **extra}))
    init_seed(config["seed"], config["reproducibility"])
    _, train, valid, test = load_data(config)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model)(config, train._dataset)
    return config, (train, valid, test), net


def test_width_known_on_the_host_writes_the_same_inputs(data_path, tmp_path):
    _, (train, _, _), net = _model(data_path, tmp_path)
    feat = train._dataset.inter_feat
    history, lengths = feat["item_id_list"][:50], feat["item_length"][:50]
    kept = int(lengths.clamp(max=net.max_his_len).max())
    for modality, task in (("text", None), ("image", "fusionseqrec_t2i")):
        read = net.encode_history(history, lengths, modality, task)
        given = net.tokenizer.encode_history(history, lengths, modality, task, max_kept=kept)
        assert all(torch.equal(a, b) for a, b in zip(read, given))
    empty = net.tokenizer.encode_history(history[:0], lengths[:0], "text", max_kept=kept)
    assert empty[0].shape == (0, kept * net.tokens_text.shape[1] + 1)


def test_fusion_rows_follow_their_coin(data_path, tmp_path):
    """Each row of the fusion task is written in the direction its coin gives (first when < 0.5),
    both directions padded alike, the rows kept in their order."""
    _, (train, _, _), net = _model(data_path, tmp_path)
    feat = train._dataset.inter_feat
    history, lengths, target = feat["item_id_list"][:64], feat["item_length"][:64], feat["item_id"][:64]
    torch.manual_seed(3)
    ids, mask, labels = net.task_inputs("fusionseqrec", history, lengths, target)
    torch.manual_seed(3)
    coin = torch.rand(64) < 0.5
    assert 0 < int(coin.sum()) < 64
    for i in range(64):
        direction = TASKS["fusionseqrec"].directions[0 if coin[i] else 1]
        row_ids, row_mask = net.tokenizer.encode_history(history[i:i + 1], lengths[i:i + 1], direction.source,
                                                         direction.name)
        width = row_ids.shape[1]
        assert torch.equal(ids[i, :width], row_ids[0]) and torch.equal(mask[i, :width], row_mask[0])
        assert not mask[i, width:].any()
        row_labels = net.tokenizer.item_tokens(target[i:i + 1], direction.target)[0]
        assert torch.equal(labels[i, :len(row_labels)], row_labels) and (labels[i, len(row_labels):] == IGNORE).all()


def test_epoch_loss_summed_on_the_device_is_the_token_mean(data_path, tmp_path):
    """With a learning rate of 0 (weights fixed) and no dropout, the epoch loss the trainer reads back once
    equals the mean token cross-entropy over the epoch's batches, computed batch by batch."""
    config, (train, valid, _), net = _model(data_path, tmp_path, learning_rate=0.0, weight_decay=0.0,
                                            dropout_rate=0.0, autocast_dtype="none", gradient_accumulation_steps=2,
                                            tasks=["seqrec", "fusionseqrec", "item2image"])
    trainer = get_trainer(config["MODEL_TYPE"], "MQL4GRec")(config, net)
    trainer._prepare_schedule(train)
    epoch_loss = trainer._train_epoch(train, 0)
    total, tokens = 0.0, 0
    with torch.no_grad():
        batches = trainer._epoch_batches(0)
        for step, group in enumerate(batches[i:i + 2] for i in range(0, len(batches), 2)):
            for inputs in trainer._group_inputs(group, 0, step):
                loss, n = net.token_loss(*inputs)
                total, tokens = total + float(loss), tokens + n
    assert epoch_loss == pytest.approx(total / tokens, rel=1e-6)


# ------------------------------------------------------------------------------ time budget
def _run(model, data_path, folder, **extra):
    config = quiet_config(data_path=data_path, checkpoint_dir=str(folder), **extra)
    if model in ("TIGER", "MQL4GRec"):
        config = {**TINY, **config}
    return run_recbole_mql(model, "Instruments", config_dict=config)


def test_time_budget_stops_after_a_finished_epoch_tests_and_resumes(data_path, tmp_path, caplog):
    from recbole_mql.checkpoint import load_checkpoint_file

    caplog.set_level(logging.INFO)
    # a budget no second epoch fits: the first epoch always runs, then training ends
    first = _run("TIGER", data_path, tmp_path, epochs=3, time_budget_minutes=1e-6)
    assert first["ended_by"] == ENDED_BY_BUDGET and first["best_epoch"] == 0 and first["epochs_trained"] == 1
    assert first["test_result"]["ndcg@10"] >= 0 and os.path.isfile(first["saved_model_file"])
    last = os.path.join(tmp_path, "TIGER-Instruments-last.pth")
    state = load_checkpoint_file(last)
    assert state["epoch"] == 0 and not state["stopped_early"]  # not finished: it can go on
    assert any("time budget of" in r.getMessage() and "--resume=last" in r.getMessage() for r in caplog.records)

    resumed = _run("TIGER", data_path, tmp_path, epochs=3, resume="last")
    assert resumed["ended_by"] == ENDED_BY_EPOCHS and resumed["epochs_trained"] == 3
    assert load_checkpoint_file(last)["epoch"] == 2


def test_time_budget_that_fits_changes_nothing(data_path, tmp_path):
    free = _run("TIGER", data_path, tmp_path / "a", epochs=2)
    roomy = _run("TIGER", data_path, tmp_path / "b", epochs=2, time_budget_minutes=600.0)
    assert free["ended_by"] == roomy["ended_by"] == ENDED_BY_EPOCHS
    assert free["test_result"] == roomy["test_result"]


def test_time_budget_ends_recbole_models_too(data_path, tmp_path):
    small = dict(hidden_size=16, inner_size=32, n_layers=1, train_batch_size=512, eval_batch_size=512)
    ended = _run("SASRec", data_path, tmp_path / "a", epochs=4, time_budget_minutes=1e-6, **small)
    assert ended["ended_by"] == ENDED_BY_BUDGET and ended["best_epoch"] == 0 and ended["epochs_trained"] == 1
    assert ended["test_result"]["ndcg@10"] >= 0
    stopped = _run("SASRec", data_path, tmp_path / "b", epochs=30, stopping_step=1, **small)
    assert stopped["ended_by"] in (ENDED_BY_EARLY_STOPPING, ENDED_BY_EPOCHS)


@pytest.mark.parametrize("value", ["-1", "'soon'"])
def test_bad_time_budget_is_refused(data_path, value, capsys):
    from recbole_mql.cli import main

    code = main(["--model=TIGER", "--dataset=Instruments", f"--data_path={data_path}", f"--time_budget_minutes={value}"])
    assert code == 2
    assert "time_budget_minutes" in capsys.readouterr().err
