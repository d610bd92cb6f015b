"""Side-by-side comparison (table, plot, logs, resume, failures, published numbers), protocols,
and looking at a trained model's recommendations, on tiny real subsets."""

import csv
import json
import os

import pytest

from dataset_prep.atomic import convert
from recbole_mql import compare
from recbole_mql.cli import main as cli_main
from recbole_mql.compare import CompareError, run_comparison
from recbole_mql.protocol import load_protocol, protocol_config
from recbole_mql.quick_start import run_recbole_mql
from recbole_mql.recommend import UnknownUserError, load_checkpoint, recommend, top_k, user_history
from tests.conftest import SMALL_T5, quiet_config, subset_source

TINY = {"epochs": 1, "n_layers": 1, "hidden_size": 32, "inner_size": 64, "train_batch_size": 256,
        "eval_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 20}


TINY_T5 = {"num_layers": 1, "num_decoder_layers": 1, "beam_size": 10, "valid_users": 50}


def tiny_config(data_path, **extra):
    """Fast, quiet settings; no checkpoint_dir, so checkpoints land in the comparison folder."""
    config = quiet_config(data_path=data_path, **{**TINY, **extra})
    config.pop("checkpoint_dir")
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Converted subsets (Instruments: 300 users, text + image codes; Scientific: 150 users, text codes
    and titles); the tests run inside the folder so that RecBole's log/ stays out of the repository."""
    root = tmp_path_factory.mktemp("compare")
    convert("Instruments", subset_source("Instruments", 300, str(root / "src_ins")), str(root / "data"))
    convert("Scientific", subset_source("Scientific", 150, str(root / "src_sci")), str(root / "data"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield root


def failing(model, run=None):
    """``run_recbole_mql`` (or ``run``) that raises for ``model``: a model failing mid-comparison."""
    run = run or run_recbole_mql

    def runner(name, *args, **kwargs):
        if name == model:
            raise RuntimeError(f"{model} broke down")
        return run(name, *args, **kwargs)

    return runner


@pytest.fixture(scope="module")
def comparison(workdir):
    """Pop, SASRec, FDSA and a model that fails (GRU4Rec, made to) on Instruments, with the published numbers."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, "run_recbole_mql", failing("GRU4Rec"))
        return run_comparison(["Pop", "SASRec", "FDSA", "GRU4Rec"], "Instruments",
                              config_dict=tiny_config(str(workdir / "data")), results_dir=str(workdir / "results"),
                              with_reference=True)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_comparison_writes_table_plot_logs_and_configs(comparison):
    run_dir = comparison["run_dir"]
    rows = read_csv(os.path.join(run_dir, "results.csv"))
    assert list(rows[0]) == compare.COLUMNS + compare.CI_COLUMNS
    assert [(r["model"], r["status"]) for r in rows] == [
        ("Pop", "ok"), ("SASRec", "ok"), ("FDSA", "ok"), ("GRU4Rec", "failed")]
    for row in rows[:3]:
        assert 0 <= float(row["NDCG@10"]) <= float(row["HR@10"]) <= 1 and int(row["parameter count"]) > 0
        assert row["ended by"] in ("early stopping", "epoch limit") and int(row["epochs"]) > int(row["best epoch"])
        assert os.path.isfile(os.path.join(run_dir, f"{row['model']}.log"))
        with open(os.path.join(run_dir, f"{row['model']}.config.yaml")) as f:
            assert f"model: {row['model']}" in f.read()
        saved = comparison["rows"][rows.index(row)]["saved_model_file"]
        assert os.path.dirname(saved) == os.path.join(run_dir, "checkpoints") and os.path.isfile(saved)
    with open(os.path.join(run_dir, "results.md")) as f:
        markdown = f.read()
    assert "| model | status | HR@1 |" in markdown and "| SASRec | ok |" in markdown
    with open(os.path.join(run_dir, "metrics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_fdsa_embeds_both_code_fields(comparison):
    with open(os.path.join(comparison["run_dir"], "FDSA.config.yaml")) as f:
        text = f.read()
    assert "selected_features:\n- text_code\n- image_code" in text


def test_failed_model_is_a_row_not_the_end(comparison):
    failed = comparison["rows"][3]
    assert failed["status"] == "failed" and "RuntimeError: GRU4Rec broke down" in failed["error"]
    assert "\n" not in failed["error"] and failed["HR@10"] is None
    with open(os.path.join(comparison["run_dir"], "GRU4Rec.log")) as f:
        assert "GRU4Rec broke down" in f.read()


def test_reference_rows_and_ratios(comparison):
    ref = {(r["model"], r["source"]): r for r in comparison["reference_rows"]}
    ours = comparison["rows"][1]
    assert ref[("SASRec", "published: MACRec")]["HR@10"] == 0.1233
    assert ref[("SASRec", "ours / MACRec")]["HR@10"] == pytest.approx(ours["HR@10"] / 0.1233, abs=1e-3)
    assert ("FDSA", "published: MACRec") in ref and not any(r["model"] == "Pop" for r in ref.values())
    assert len(read_csv(os.path.join(comparison["run_dir"], "reference.csv"))) == len(comparison["reference_rows"])
    assert "## Published numbers" in comparison["report"] and "MACRec (AAAI 2026)" in comparison["report"]


def spy_runs(monkeypatch, interrupt=None, fail=None):
    """Record the models run_comparison trains; raise KeyboardInterrupt for ``interrupt``, an error for ``fail``."""
    ran = []

    def run(model, *args, **kwargs):
        ran.append(model)
        if model == interrupt:
            raise KeyboardInterrupt
        if model == fail:
            raise RuntimeError(f"{model} broke down")
        return run_recbole_mql(model, *args, **kwargs)

    monkeypatch.setattr(compare, "run_recbole_mql", run)
    return ran


def test_resume_skips_finished_models(comparison, workdir, monkeypatch):
    ran = spy_runs(monkeypatch, fail="GRU4Rec")
    again = run_comparison(["Pop", "SASRec", "FDSA", "GRU4Rec"], "Instruments",
                           config_dict=tiny_config(str(workdir / "data")), resume_dir=comparison["run_dir"],
                           with_reference=True)
    assert ran == ["GRU4Rec"]  # only the failed model runs again
    assert again["rows"][3]["status"] == "failed"
    assert [r["HR@10"] for r in again["rows"][:3]] == [r["HR@10"] for r in comparison["rows"][:3]]


def test_interrupted_comparison_resumes(workdir, monkeypatch):
    args = (["Pop", "SASRec"], "Instruments")
    kwargs = {"config_dict": tiny_config(str(workdir / "data")), "resume_dir": str(workdir / "interrupted")}
    ran = spy_runs(monkeypatch, interrupt="SASRec")
    with pytest.raises(KeyboardInterrupt):
        run_comparison(*args, **kwargs)
    assert ran == ["Pop", "SASRec"]
    assert os.path.isfile(workdir / "interrupted" / "Pop.result.json")
    assert not os.path.exists(workdir / "interrupted" / "SASRec.result.json")
    ran = spy_runs(monkeypatch)
    result = run_comparison(*args, **kwargs)
    assert ran == ["SASRec"] and [r["status"] for r in result["rows"]] == ["ok", "ok"]


def test_disjoint_comparisons_share_a_folder(workdir, monkeypatch):
    """Two commands with disjoint model lists into one folder (e.g. side by side on 2 cores); the
    command naming both then trains nothing and tables both."""
    kwargs = {"config_dict": tiny_config(str(workdir / "data")), "resume_dir": str(workdir / "shared_folder")}
    ran = spy_runs(monkeypatch)
    run_comparison(["SASRec"], "Instruments", **kwargs)
    run_comparison(["Pop"], "Instruments", **kwargs)
    with open(workdir / "shared_folder" / compare.MANIFEST, encoding="utf-8") as f:
        assert json.load(f)["models"] == ["SASRec", "Pop"]
    result = run_comparison(["Pop", "SASRec"], "Instruments", **kwargs)
    assert ran == ["SASRec", "Pop"]
    assert [(r["model"], r["status"]) for r in result["rows"]] == [("Pop", "ok"), ("SASRec", "ok")]
    assert [r["model"] for r in read_csv(workdir / "shared_folder" / "results.csv")] == ["Pop", "SASRec"]


def test_interrupted_generative_model_resumes_from_its_last_epoch(workdir, monkeypatch):
    """A comparison killed in TIGER's second epoch goes on from the state saved after the first."""
    from recbole_mql.trainer.generative_trainer import GenerativeTrainer

    train_epoch, epochs = GenerativeTrainer._train_epoch, []

    def spy(self, train_data, epoch_idx, *args, **kwargs):
        epochs.append(epoch_idx)
        if epoch_idx == 1 and interrupt:
            raise KeyboardInterrupt
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(GenerativeTrainer, "_train_epoch", spy)
    kwargs = {"config_dict": tiny_config(str(workdir / "data"), epochs=2, **{**SMALL_T5, **TINY_T5}),
              "resume_dir": str(workdir / "mid_epoch")}
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        run_comparison(["TIGER"], "Scientific", **kwargs)
    assert epochs == [0, 1]
    assert os.path.isfile(workdir / "mid_epoch" / "checkpoints" / "TIGER-Scientific-last.pth")
    interrupt, epochs[:] = False, []
    result = run_comparison(["TIGER"], "Scientific", **kwargs)
    assert epochs == [1]  # epoch 0 was not trained again
    assert result["rows"][0]["status"] == "ok" and result["rows"][0]["best epoch"] in (0, 1)


def test_resume_refuses_other_settings(comparison, workdir):
    with pytest.raises(CompareError, match="resume it with the same"):
        run_comparison(["Pop"], "Instruments", config_dict=tiny_config(str(workdir / "data"), epochs=2),
                       resume_dir=comparison["run_dir"])


def test_reference_and_protocol_errors_before_training(workdir):
    with pytest.raises(CompareError, match="No published numbers for Scientific.*Scientific.yaml"):
        run_comparison(["Pop"], "Scientific", results_dir=str(workdir / "r"), with_reference=True)
    with pytest.raises(CompareError, match="Protocol 'gpu' not found.*cpu, paper"):
        run_comparison(["Pop"], "Scientific", results_dir=str(workdir / "r"), protocol="gpu")


def test_protocols_have_valid_keys_and_model_sections():
    cpu, paper = load_protocol("cpu"), load_protocol("paper")
    assert protocol_config(cpu, "MQL4GRec")["valid_users"] > 0 and protocol_config(cpu, "SASRec")["epochs"] == 20
    assert protocol_config(cpu, "Pop") == cpu["common"]
    assert protocol_config(paper, "MQL4GRec")["valid_users"] == 0 and paper["common"]["epochs"] == 200
    assert set(cpu["models"]) == set(paper["models"]) == {"SASRec", "BERT4Rec", "FDSA", "TIGER", "MQL4GRec"}


@pytest.fixture(scope="module")
def scientific(workdir):
    """FDSA (needs image codes Scientific lacks) and a tiny TIGER on Scientific."""
    return run_comparison(["FDSA", "TIGER"], "Scientific", results_dir=str(workdir / "results"),
                          config_dict=tiny_config(str(workdir / "data"), **{**SMALL_T5, **TINY_T5}))


def test_model_lacking_item_features_is_skipped_with_fix(scientific):
    fdsa = scientific["rows"][0]
    assert fdsa["status"] == "skipped"
    assert "['image_code']" in fdsa["error"] and "--selected_features" in fdsa["error"]
    assert scientific["rows"][1]["status"] == "ok"


def test_recommend_sasrec_top_k(comparison):
    checkpoint = comparison["rows"][1]["saved_model_file"]
    table = recommend(checkpoint, "5", topk=10)
    assert list(table.columns) == ["rank", "item_id", "score", "text_code", "image_code"]
    assert table["rank"].tolist() == list(range(1, 11)) and table["item_id"].is_unique
    assert table["score"].is_monotonic_decreasing
    assert table["text_code"].str.match(r"^(<[a-e]_\d+>){5}$").all()
    assert table["image_code"].str.match(r"^(<[A-D]_\d+>){4}$").all()
    with pytest.raises(UnknownUserError, match="Unknown user '999999'.*Instruments has 300 users"):
        recommend(checkpoint, "999999")


def test_recommend_generative_model_with_titles(scientific, workdir):
    loaded = load_checkpoint(scientific["rows"][1]["saved_model_file"])
    table = top_k(loaded, "3", topk=10)
    assert list(table.columns) == ["rank", "item_id", "score", "text_code", "title"]
    assert len(table) == 10 and table["item_id"].is_unique and table["score"].is_monotonic_decreasing
    history = user_history(loaded, "3")
    with open(workdir / "src_sci" / "Scientific.inter.json") as f:
        assert history["item_id"].tolist() == [str(i) for i in json.load(f)["3"]]
    assert history["title"].str.len().min() > 0
    with pytest.raises(ValueError, match="topk=11 > beam_size=10.*--beam_size=11"):
        top_k(loaded, "3", topk=11)


def test_cli_compare_and_recommend(comparison, workdir, capsys):
    data = str(workdir / "data")
    assert cli_main(["--compare=Pop", "--dataset=Instruments", f"--data_path={data}", "--protocol=cpu",
                     "--epochs=1", "--state=WARNING", "--show_progress=False",
                     f"--results_dir={workdir / 'cli'}"]) == 0
    out = capsys.readouterr().out
    assert "| Pop | ok |" in out
    [run] = os.listdir(workdir / "cli" / "Instruments")
    with open(workdir / "cli" / "Instruments" / run / "Pop.config.yaml") as f:
        text = f.read()
    assert "epochs: 1\n" in text and "stopping_step: 3\n" in text  # --epochs over the protocol's 10
    checkpoint = comparison["rows"][1]["saved_model_file"]
    assert cli_main(["--recommend", f"--checkpoint={checkpoint}", "--user=5", "--topk=3"]) == 0
    out = capsys.readouterr().out
    assert "history of user 5" in out and "top-3 for user 5" in out
    assert cli_main(["--recommend", f"--checkpoint={checkpoint}", "--user=nobody"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown user 'nobody'" in err[0]
    assert cli_main(["--model=Pop", "--dataset=Instruments", f"--data_path={data}", "--protocol=gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Protocol 'gpu' not found" in err[0]
    assert cli_main(["--compare=Pop,SASRec", "--dataset=Instruments", "--nproc=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compare runs in one process" in err[0]


def test_per_user_ranks_intervals_and_paired_tests(workdir):
    """Every model's per-user ranks give back RecBole's metrics to the last digit; the table carries
    bootstrap intervals and significance.md the paired tests against the baseline."""
    from recbole_mql.significance import metrics_from_ranks, read_ranks

    result = run_comparison(["Pop", "TIGER"], "Instruments", baseline="Pop",
                            config_dict=tiny_config(str(workdir / "data"), **TINY_T5),
                            results_dir=str(workdir / "results_stats"))
    run_dir = result["run_dir"]
    for row in result["rows"]:
        assert row["status"] == "ok", row["error"]
        users, items, ranks = read_ranks(os.path.join(run_dir, f"{row['model']}.ranks.csv.gz"))
        assert len(users) == 300 and all(items)
        assert metrics_from_ranks(ranks, list(row["test_result"])) == row["test_result"]
        assert row["NDCG@10 low"] <= row["NDCG@10"] <= row["NDCG@10 high"]
    assert [r["scoring"] for r in result["rows"]] == ["", "strict"]
    with open(os.path.join(run_dir, "significance.md")) as f:
        text = f.read()
    assert "| TIGER | Pop | ndcg@10 |" in text and "Holm" in text
    tests = read_csv(os.path.join(run_dir, "significance.csv"))
    assert len(tests) == 5 and all(0 < float(t["p_permutation"]) <= 1 for t in tests)
    assert "±" in result["report"]


def test_several_seeds_pair_within_a_seed_and_resume(workdir, monkeypatch):
    """--seeds runs every model once per seed, gives mean and spread over seeds, and resumes."""
    argv = ["--compare=Pop,SASRec", "--dataset=Instruments", "--seeds=2020,2021", "--baseline=Pop",
            f"--data_path={workdir / 'data'}", f"--results_dir={workdir / 'results_seeds'}", "--epochs=1",
            "--n_layers=1", "--hidden_size=32", "--inner_size=64", "--MAX_ITEM_LIST_LENGTH=20",
            "--show_progress=False", "--state=WARNING"]
    assert cli_main(argv) == 0
    run_dir = next((workdir / "results_seeds" / "Instruments").iterdir())
    rows = read_csv(run_dir / "results.csv")
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("Pop", "2020"), ("Pop", "2021"), ("SASRec", "2020"), ("SASRec", "2021")]
    for label in ("Pop.seed2020", "SASRec.seed2021"):
        assert (run_dir / f"{label}.ranks.csv.gz").is_file() and (run_dir / f"{label}.log").is_file()
    spread = read_csv(run_dir / "seeds.csv")
    assert [r["model"] for r in spread] == ["Pop (mean of 2 of 2 seeds)", "SASRec (mean of 2 of 2 seeds)"]
    import statistics

    sasrec = [float(r["NDCG@10"]) for r in rows if r["model"] == "SASRec"]
    assert float(spread[1]["NDCG@10"]) == pytest.approx(sum(sasrec) / 2, abs=1e-4)
    assert float(spread[1]["NDCG@10 sd"]) == pytest.approx(statistics.stdev(sasrec), abs=1e-4)
    tests = read_csv(run_dir / "significance.csv")
    assert {(t["model"], t["versus"], t["seed"]) for t in tests} == {("SASRec", "Pop", "2020"), ("SASRec", "Pop", "2021")}
    assert cli_main(argv + [f"--resume_dir={run_dir}"]) == 0  # finished runs are not run again
    assert len(list(run_dir.glob("*.result.json"))) == 4


def test_comparisons_started_in_one_second_get_a_folder_each(tmp_path, monkeypatch):
    monkeypatch.setattr(compare.time, "strftime", lambda fmt: "2026-11-28_05-00-00")
    folders = [compare.open_run_dir(str(tmp_path), "Instruments") for _ in range(3)]
    assert len(set(folders)) == 3 and all(os.path.isdir(f) for f in folders)
    assert os.path.basename(folders[0]) == "2026-11-28_05-00-00" and folders[2].endswith("-2")
    assert compare.open_run_dir(str(tmp_path), "Instruments", resume_dir=folders[1]) == folders[1]
