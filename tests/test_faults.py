"""Fault injection: what a user relies on when runs are interrupted, resumed, copied, or given bad files.

Nothing lost (a resumed finished run, a copied run, another run's checkpoint, a killed conversion,
a comparison folder under other settings), nothing run from a file (a crafted checkpoint or config
value), and one clear line for each bad input. Small real data: the shipped Scientific slice.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dataset_prep.atomic import convert, ensure_atomic_files, marker_path
from dataset_prep.io import PrepError
from recbole_mql import compare
from recbole_mql.checkpoint import CheckpointError, CheckpointMismatch, load_checkpoint_file
from recbole_mql.checkpoint import main as upgrade_main
from recbole_mql.cli import main as cli_main
from recbole_mql.compare import CompareError, run_comparison
from recbole_mql.config import Config, ConfigValueError
from recbole_mql.quick_start import pretraining_configs, run_recbole_mql
from recbole_mql.recommend import load_checkpoint
from recbole_mql.trainer.generative_trainer import GenerativeTrainer
from tests.conftest import REPO, SMALL_T5, quiet_config, subset_source

# 1+1-layer T5, 2 epochs, small validation sample: a TIGER run of the 150-user slice takes seconds
TINY_TIGER = {**SMALL_T5, "num_layers": 1, "num_decoder_layers": 1, "beam_size": 10, "valid_users": 50, "epochs": 2,
              "train_batch_size": 256, "eval_batch_size": 256}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Scientific (150 users) and a second dataset Sci100 (its first 100 users under another name), and
    the same name with other data (data_other/Scientific: 100 users); tests run inside the folder."""
    root = tmp_path_factory.mktemp("faults")
    sci = subset_source("Scientific", 150, str(root / "src" / "Scientific"))
    convert("Scientific", sci, str(root / "data"))
    convert("Sci100", renamed_source(subset_source("Scientific", 100, str(root / "src100")), "Scientific", "Sci100",
                                     str(root / "src" / "Sci100")), str(root / "data"))
    convert("Scientific", str(root / "src100"), str(root / "data_other"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("RECBOLE_MQL_SOURCE", raising=False)
        yield root


def renamed_source(folder, old, new, out):
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith(old + "."):
            shutil.copy(os.path.join(folder, name), os.path.join(out, new + name[len(old):]))
    return out


def tiger_config(workdir, **extra):
    return quiet_config(**{"data_path": str(workdir / "data"), **TINY_TIGER, **extra})


def snapshot(folder):
    """{relative path: sha256 (and mtime_ns for checkpoints)} of every file under ``folder``; a test
    pass may rewrite its per-user ranks beside a checkpoint, with the same bytes."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (digest, os.stat(path).st_mtime_ns if name.endswith(".pth") else None)
    return out


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def cli_flags(workdir, checkpoint_dir, **extra):
    flags = {**tiger_config(workdir, checkpoint_dir=str(checkpoint_dir)), **extra}
    return ["--model=TIGER", "--dataset=Scientific"] + [f"--{k}={v}" for k, v in flags.items()]


def interrupt_in_epoch(monkeypatch, epoch):
    """Ctrl-C when training reaches ``epoch`` (after the epochs before it were saved)."""
    train_epoch = GenerativeTrainer._train_epoch

    def spy(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch:
            raise KeyboardInterrupt
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(GenerativeTrainer, "_train_epoch", spy)


# ------------------------------------------------------------------------ interrupted, copied
@pytest.fixture(scope="module")
def interrupted(workdir):
    """A TIGER run stopped by Ctrl-C in its second epoch, through the command line (exit 130)."""
    folder, err = workdir / "interrupted", io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        interrupt_in_epoch(mp, 1)
        status = cli_main(cli_flags(workdir, folder))
    return status, folder, err.getvalue()


def test_ctrl_c_says_how_to_resume(interrupted):
    status, folder, err = interrupted
    assert status == 130 and len(err.strip().splitlines()) == 1
    assert "--resume=last" in err and "TIGER-Scientific-last.pth" in err
    assert os.path.isfile(folder / "TIGER-Scientific-last.pth")
    state = load_checkpoint_file(folder / "TIGER-Scientific-last.pth")
    assert state["epoch"] == 0 and not state["stopped_early"]


def test_ctrl_c_message_is_one_line(workdir, monkeypatch, capsys):
    interrupt_in_epoch(monkeypatch, 0)  # before anything is saved
    assert cli_main(cli_flags(workdir, workdir / "nothing_saved")) == 130
    assert "nothing was saved" in one_error_line(capsys)


@pytest.fixture(scope="module")
def copied(workdir, interrupted):
    """The interrupted run's checkpoints copied elsewhere and resumed there (finishing it)."""
    _, original, _ = interrupted
    copy = workdir / "copy"
    shutil.copytree(original, copy)
    before = snapshot(original)
    result = run_recbole_mql("TIGER", "Scientific", config_dict=tiger_config(
        workdir, checkpoint_dir=str(copy), resume=str(copy / "TIGER-Scientific-last.pth")))
    return before, original, copy, result


def test_copied_run_never_writes_into_the_original(copied):
    before, original, copy, result = copied
    assert snapshot(original) == before
    assert os.path.dirname(result["saved_model_file"]) == str(copy)
    assert load_checkpoint_file(copy / "TIGER-Scientific-last.pth")["epoch"] == 1  # trained on, in the copy


def test_resumed_finished_run_tests_its_best_checkpoint_and_touches_nothing(workdir, copied):
    _, _, copy, finished = copied
    before = snapshot(copy)
    again = run_recbole_mql("TIGER", "Scientific", config_dict=tiger_config(
        workdir, checkpoint_dir=str(copy), resume="last"))
    assert snapshot(copy) == before  # not one byte of any file, not one checkpoint's timestamp
    assert again["saved_model_file"] == finished["saved_model_file"]
    assert again["best_epoch"] == finished["best_epoch"] >= 0
    assert again["test_result"] == finished["test_result"]
    assert again["train_seconds"] == pytest.approx(finished["train_seconds"], abs=1)  # the run's, not 0.1 s


def test_comparison_interrupted_in_its_final_test_resumes_without_training(workdir, monkeypatch):
    config = tiger_config(workdir, epochs=1)
    config.pop("checkpoint_dir")  # checkpoints go into the comparison folder
    kwargs = {"config_dict": config, "resume_dir": str(workdir / "cmp")}
    evaluate = GenerativeTrainer.evaluate

    def test_pass_interrupted(self, eval_data, load_best_model=True, **kw):
        if load_best_model:
            raise KeyboardInterrupt
        return evaluate(self, eval_data, load_best_model=load_best_model, **kw)

    monkeypatch.setattr(GenerativeTrainer, "evaluate", test_pass_interrupted)
    with pytest.raises(KeyboardInterrupt, match="--resume_dir="):
        run_comparison(["TIGER"], "Scientific", **kwargs)
    monkeypatch.undo()
    checkpoints = workdir / "cmp" / "checkpoints"
    before, trained = snapshot(checkpoints), []
    monkeypatch.setattr(GenerativeTrainer, "_train_epoch", lambda *a, **k: trained.append(1))
    row = run_comparison(["TIGER"], "Scientific", **kwargs)["rows"][0]
    assert trained == [] and snapshot(checkpoints) == before
    last = load_checkpoint_file(checkpoints / "TIGER-Scientific-last.pth")
    assert row["status"] == "ok" and row["best epoch"] == last["best_epoch"] >= 0
    assert row["train seconds"] == pytest.approx(last["train_seconds"], abs=0.2) and last["train_seconds"] > 0


def test_recbole_model_resumed_with_no_epoch_left_writes_nothing(workdir, tmp_path):
    """RecBole's own trainer re-saves a resumed checkpoint as "epoch -1" when no epoch is left; ours tests it."""
    config = quiet_config(data_path=str(workdir / "data"), checkpoint_dir=str(tmp_path), epochs=1, hidden_size=16,
                          inner_size=32, n_layers=1, train_batch_size=512, eval_batch_size=512)
    first = run_recbole_mql("SASRec", "Scientific", config_dict=config)
    before = snapshot(tmp_path)
    again = run_recbole_mql("SASRec", "Scientific", config_dict={**config, "resume": first["saved_model_file"]})
    assert snapshot(tmp_path) == before
    assert again["best_epoch"] == first["best_epoch"] == 0 and again["test_result"] == first["test_result"]


# ------------------------------------------------------------------- whose checkpoint it is
def test_another_runs_checkpoint_is_refused(workdir, copied, capsys):
    last = copied[2] / "TIGER-Scientific-last.pth"
    with pytest.raises(CheckpointMismatch, match="TIGER on Scientific.*this run is TIGER on Sci100.*dataset Scien"):
        run_recbole_mql("TIGER", "Sci100", config_dict=tiger_config(workdir, checkpoint_dir=str(workdir / "x"),
                                                                    resume=str(last)))
    # same name, other data: the fingerprint of its items and split differs
    with pytest.raises(CheckpointMismatch, match="items or split of Scientific differ"):
        run_recbole_mql("TIGER", "Scientific", config_dict=tiger_config(
            workdir, data_path=str(workdir / "data_other"), checkpoint_dir=str(workdir / "x"), resume=str(last)))
    # another architecture: one line naming the key, through the command line
    assert cli_main(cli_flags(workdir, workdir / "x", resume=str(last), num_layers=2)) == 2
    line = one_error_line(capsys)
    assert "num_layers 1 != 2" in line and str(last) in line


def test_pretrained_checkpoint_of_other_sizes_or_model_is_one_line(workdir, copied, capsys):
    best = copied[3]["saved_model_file"]
    assert cli_main(cli_flags(workdir, workdir / "y", pretrained_checkpoint=best, d_model=32, d_kv=8)) == 2
    line = one_error_line(capsys)
    assert "another architecture" in line and "d_model 64 != 32" in line


def test_checkpoint_of_another_model_is_one_line(workdir, tmp_path, capsys):
    config = quiet_config(data_path=str(workdir / "data"), checkpoint_dir=str(tmp_path), epochs=1)
    pop = run_recbole_mql("Pop", "Scientific", config_dict=config)["saved_model_file"]
    for key, expected in [("pretrained_checkpoint", "is a checkpoint of Pop, not of a generative model"),
                          ("resume", "model Pop != TIGER")]:
        assert cli_main(cli_flags(workdir, tmp_path, **{key: pop})) == 2
        assert expected in one_error_line(capsys)


# ---------------------------------------------------------------------- nothing runs from a file
class Touch:
    """Unpickling this creates ``path``: proof that a file ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def crafted_checkpoint(path, proof, protocol=2):
    state = {"config": {"model": "TIGER", "dataset": "Scientific"}, "state_dict": {}, "payload": Touch(proof)}
    torch.save(state, path, pickle_protocol=protocol)
    return str(path)


def test_crafted_checkpoint_never_runs(workdir, copied, capsys):
    proof = workdir / "pwned_checkpoint"
    evil = crafted_checkpoint(workdir / "evil.pth", proof)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match=r"\(posix.system\); loading it could run code"):
        load_checkpoint(crafted_checkpoint(workdir / "evil4.pth", proof, protocol=4))
    assert cli_main(["--recommend", f"--checkpoint={evil}", "--user=3"]) == 2
    assert "refused" in one_error_line(capsys)
    for key in ("resume", "pretrained_checkpoint"):
        assert cli_main(cli_flags(workdir, workdir / "z", **{key: evil})) == 2
        assert "refused" in one_error_line(capsys)
    # one found in a comparison folder (an interrupted run's last state) is refused too
    folder = workdir / "evil_cmp"
    os.makedirs(folder / "checkpoints")
    crafted_checkpoint(folder / "checkpoints" / "TIGER-Scientific-last.pth", proof)
    config = tiger_config(workdir)
    config.pop("checkpoint_dir")
    row = run_comparison(["TIGER"], "Scientific", config_dict=config, resume_dir=str(folder))["rows"][0]
    assert row["status"] == "failed" and "could run code" in row["error"]
    assert not proof.exists()


def test_crafted_config_values_never_run(workdir, capsys):
    proof = workdir / "pwned_config"
    code = f"(__import__('pathlib').Path('{proof}').touch(), 3)[1]"
    protocol = workdir / "evil_protocol.yaml"
    protocol.write_text(f'beam_size: "{code}"\n')
    with pytest.raises(ConfigValueError, match="beam_size=.*protocol.*must be an integer"):
        Config("TIGER", "Scientific", protocol=str(protocol))
    with pytest.raises(ConfigValueError, match="beam_size=.*config_dict"):
        Config("TIGER", "Scientific", config_dict={"beam_size": code})
    assert cli_main(["--model=TIGER", "--dataset=Scientific", f"--beam_size={code}"]) == 2
    assert "--beam_size on the command line" in one_error_line(capsys)
    yaml_file = workdir / "evil.yaml"
    yaml_file.write_text(f"beam_size: !!python/object/apply:os.system ['touch {proof}']\n")
    assert cli_main(["--model=TIGER", "--dataset=Scientific", f"--config_files={yaml_file}"]) == 2
    assert str(yaml_file) in one_error_line(capsys)
    assert not proof.exists()
    # literals still parse as RecBole reads them
    config = Config("TIGER", "Scientific", cmd_args={"topk": "[1,5,10,20]", "learning_rate": "1e-3",
                                                     "show_progress": "false", "beam_size": "20"})
    assert config["topk"] == [1, 5, 10, 20] and config["learning_rate"] == 0.001
    assert config["show_progress"] is False and config["beam_size"] == 20


def test_checkpoints_are_plain_data(copied):
    """What training writes loads weights-only (no Config object, no numpy pickles)."""
    state = torch.load(copied[3]["saved_model_file"], weights_only=True, map_location="cpu")
    assert isinstance(state["config"], dict) and state["identity"]["model"] == "TIGER"
    assert state["identity"]["fingerprint"] and state["best_model_name"] == os.path.basename(
        copied[3]["saved_model_file"])
    assert "best_model_file" not in state  # no absolute path decides where a resumed run writes


def test_checkpoint_of_an_earlier_version_is_refused_then_converted_on_request(workdir, copied, tmp_path):
    """Before this format, checkpoints pickled RecBole's Config: refused (it would be unpickled in full),
    with the one command that converts a file the user trusts."""
    state = load_checkpoint_file(copied[3]["saved_model_file"])
    old = dict(state, config=Config("TIGER", "Scientific", config_dict=tiger_config(workdir)),
               best_model_file=copied[3]["saved_model_file"])
    old.pop("best_model_name")
    old_path = tmp_path / "old.pth"
    torch.save(old, old_path, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="recbole_mql.config.Config.*python -m recbole_mql.checkpoint"):
        load_checkpoint_file(old_path)
    assert upgrade_main([str(old_path)]) == 0  # python -m recbole_mql.checkpoint OLD.pth
    converted = load_checkpoint_file(old_path)
    assert converted["config"]["model"] == "TIGER" and converted["best_model_name"] == state["best_model_name"]
    assert all(torch.equal(converted["state_dict"][k], v) for k, v in state["state_dict"].items())


def test_converting_a_crafted_checkpoint_never_runs_it(workdir, capsys):
    """The one command that reads the earlier format allows that format's classes by name only."""
    proof = workdir / "pwned_upgrade"
    for protocol in (2, 4):
        evil = crafted_checkpoint(workdir / f"evil_upgrade{protocol}.pth", proof, protocol=protocol)
        assert upgrade_main([evil, str(workdir / "converted.pth")]) == 2
        assert "refused" in one_error_line(capsys)
    assert not proof.exists() and not (workdir / "converted.pth").exists()


def test_converting_never_runs_a_file_in_torchs_legacy_format(workdir, capsys):
    """torch reads a non-zip file's header with the pickle module's plain ``load``: that file is refused
    before torch opens it, and the conversion's ``load`` is the restricted one all the same."""
    import pickle

    from recbole_mql.checkpoint import _LegacyPickle

    proof = workdir / "pwned_legacy"
    legacy = workdir / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(Touch(proof), protocol=2))
    assert upgrade_main([str(legacy), str(workdir / "converted.pth")]) == 2
    assert "not a torch zip file" in one_error_line(capsys)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        _LegacyPickle.load(io.BytesIO(pickle.dumps(Touch(proof), protocol=2)))
    assert not proof.exists() and not (workdir / "converted.pth").exists()


def test_converting_refuses_to_change_a_class(workdir):
    """pickle's BUILD on a class object (here the stand-in for an old Config class) would set class
    attributes for the whole process; a helper of numpy.dtypes would change that module: both refused."""
    import pickle

    from recbole_mql.checkpoint import _LegacyPickle, _StandIn

    build_on_class = b"\x80\x02crecbole_mql.config\nConfig\nN}X\x04\x00\x00\x00evilK\x01s\x86b."
    with pytest.raises(pickle.UnpicklingError, match="state set on builtins.type"):
        _LegacyPickle.loads(build_on_class)
    assert not hasattr(_StandIn, "evil")
    with pytest.raises(pickle.UnpicklingError, match="numpy.dtypes._add_dtype_helper"):
        _LegacyPickle.loads(b"\x80\x02cnumpy.dtypes\n_add_dtype_helper\n.")
    dunder = b"\x80\x02crecbole_mql.config\nConfig\n)\x81}X\x0c\x00\x00\x00__setstate__K\x01sb."
    with pytest.raises(pickle.UnpicklingError, match="stand-in"):
        _LegacyPickle.loads(dunder)


# ------------------------------------------------------------------------------- conversions
KILL_AFTER_INTER = """
import os, sys
import dataset_prep.atomic as atomic
real, calls = os.replace, []
def replace(src, dst):
    calls.append(dst)
    if len(calls) == 2:  # .inter is in place, .item written to its temporary file: killed
        os._exit(9)
    real(src, dst)
os.replace = replace
atomic.convert("Scientific", sys.argv[1], sys.argv[2])
"""


def test_killed_conversion_is_redone(workdir, tmp_path):
    source = str(workdir / "src" / "Scientific")
    data = str(tmp_path / "data")
    assert ensure_atomic_files("Scientific", data, source=source)["users"] == 150
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_INTER, source, data], cwd=REPO)
    assert killed.returncode == 9
    folder = tmp_path / "data" / "Scientific"
    assert (folder / "Scientific.inter").exists() and not os.path.exists(marker_path("Scientific", data))
    assert [f for f in os.listdir(folder) if f.endswith(".tmp")]  # the killed writer's leftover
    with pytest.raises(PrepError, match="interrupted conversion.*convert them again"):
        ensure_atomic_files("Scientific", data)  # no source to convert from: refused, not taken as whole
    summary = ensure_atomic_files("Scientific", data, source=source)
    assert summary is not None and summary["users"] == 150
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]
    assert os.path.exists(marker_path("Scientific", data))
    assert ensure_atomic_files("Scientific", data, source=source) is None  # whole now: not converted again


def make_source(folder, sequences, codes, name="Toy"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter.json"), "w") as f:
        f.write(sequences if isinstance(sequences, str) else json.dumps(sequences))
    with open(os.path.join(folder, f"{name}.index_x.json"), "w") as f:
        json.dump(codes, f)
    return str(folder)


def test_bad_sources_are_refused_at_conversion(tmp_path, caplog):
    codes = {"1": ["<a_1>", "<b_1>"], "2": ["<a_2>", "<b_1>"]}
    with pytest.raises(PrepError, match="Toy.inter.json: no interactions"):
        convert("Toy", make_source(tmp_path / "empty", {}, codes), str(tmp_path / "out"))
    with pytest.raises(PrepError, match="item 2 has code index 300 at level 1.*codebook_size"):
        convert("Toy", make_source(tmp_path / "range", {"0": [1, 2]}, {**codes, "2": ["<a_2>", "<b_300>"]}),
                str(tmp_path / "out"))
    six = {str(i): [f"<{c}_{i}>" for c in "abcdef"] for i in (1, 2)}
    with pytest.raises(PrepError, match="6 levels.*holds 5 \\(code_max_levels\\)"):
        convert("Toy", make_source(tmp_path / "levels", {"0": [1, 2]}, six), str(tmp_path / "out"))
    caplog.set_level("WARNING")
    summary = convert("Toy", make_source(tmp_path / "repeat", {"0": [1, 2, 1], "1": [2, 1]}, codes),
                      str(tmp_path / "out"))
    assert summary["users_with_repeated_items"] == 1 and summary["repeated_items"] == 1
    assert "1 of 2 users have an item more than once" in caplog.text


# ------------------------------------------------------------------------- one clear line each
@pytest.mark.parametrize("flag, expected", [
    ("--beam_size=abc", "beam_size='abc' (from --beam_size on the command line) must be an integer"),
    ("--epochs=abc", "epochs='abc'"),
    ("--epochs=0", "epochs=0 (from --epochs on the command line) must be an integer of at least 1"),
    ("--epochs=-1", "epochs=-1"),
    ("--gradient_accumulation_steps=0", "gradient_accumulation_steps=0"),
    ("--valid_metric=NDCG@20", "topk [1, 5, 10] has no 20"),
    ("--topk=abc", "topk='abc'"),
    ("--topk=5", "valid_metric='NDCG@10' (from the property files) is not computed: topk [5] has no 10"),
    ("--autocast_dtype=fp8", "autocast_dtype='fp8' is not one of"),
])
def test_bad_values_are_one_line_before_training(workdir, capsys, flag, expected):
    assert cli_main(["--model=TIGER", "--dataset=Scientific", f"--data_path={workdir / 'data'}", flag]) == 2
    assert expected in one_error_line(capsys)


def test_bad_files_are_one_line(workdir, capsys, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: 3\ntopk: [1, 5\n")
    assert cli_main(["--model=TIGER", "--dataset=Scientific", f"--config_files={bad_yaml}"]) == 2
    line = one_error_line(capsys)
    assert str(bad_yaml) in line and "not valid YAML (line" in line
    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(3)}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    for name, expected in [("truncated", "not a readable checkpoint"), ("empty", "is empty"),
                           ("random", "not a readable checkpoint"), ("good", "not a training checkpoint")]:
        assert cli_main(["--recommend", f"--checkpoint={tmp_path / name}.pth", "--user=3"]) == 2
        line = one_error_line(capsys)
        assert f"{name}.pth" in line and expected in line
    empty_source = make_source(tmp_path / "src" / "Toy", "{}", {"1": ["<a_1>"]})
    assert cli_main(["--model=TIGER", "--dataset=Toy", f"--source={empty_source}",
                     f"--data_path={tmp_path / 'data'}"]) == 2
    assert "Toy.inter.json: no interactions" in one_error_line(capsys)


@pytest.fixture(scope="module")
def pop_comparison(workdir):
    config = quiet_config(data_path=str(workdir / "data"), epochs=1)
    config.pop("checkpoint_dir")
    folder = str(workdir / "pop_cmp")
    run_comparison(["Pop"], "Scientific", config_dict=config, resume_dir=folder)
    return folder, config


def test_damaged_comparison_files_are_named(pop_comparison):
    folder, config = pop_comparison
    result = os.path.join(folder, "Pop.result.json")
    text = open(result).read()
    with open(result, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(CompareError, match="Pop.result.json.*not valid JSON.*delete it to run Pop again"):
        run_comparison(["Pop"], "Scientific", config_dict=config, resume_dir=folder)
    manifest = os.path.join(folder, compare.MANIFEST)
    with open(manifest, "w") as f:
        f.write('{"dataset": "Scien')
    with pytest.raises(CompareError, match="comparison.json.*not valid JSON"):
        run_comparison(["Pop"], "Scientific", config_dict=config, resume_dir=folder)


def test_comparison_folder_refuses_an_edited_config_file(workdir, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("metrics: [Hit, NDCG]\ntopk: [1, 5, 10]\n")
    config = quiet_config(data_path=str(workdir / "data"), epochs=1)
    config.pop("checkpoint_dir")
    kwargs = {"config_dict": config, "config_file_list": [str(settings)], "resume_dir": str(tmp_path / "cmp")}
    run_comparison(["Pop"], "Scientific", **kwargs)
    renamed = tmp_path / "renamed.yaml"
    shutil.copy(settings, renamed)  # same settings under another name: the same comparison
    assert run_comparison(["Pop"], "Scientific", **{**kwargs, "config_file_list": [str(renamed)]})["rows"]
    settings.write_text("metrics: [Hit, NDCG, MRR]\ntopk: [1, 5, 10, 20]\n")
    with pytest.raises(CompareError, match="topk.*resume it with the same"):
        run_comparison(["Pop"], "Scientific", **kwargs)


def test_unknown_model_in_compare_is_refused_before_any_training(workdir, tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(compare, "run_recbole_mql", lambda model, *a, **k: ran.append(model))
    assert cli_main(["--compare=Pop,NoSuchModel,SASrec", "--dataset=Scientific", f"--data_path={workdir / 'data'}",
                     f"--results_dir={tmp_path}"]) == 2
    line = one_error_line(capsys)
    assert "Unknown model 'NoSuchModel'" in line and "Unknown model 'SASrec'" in line and "Did you mean SASRec" in line
    assert ran == [] and not os.listdir(tmp_path)


def test_failed_row_gives_a_non_zero_exit(workdir, tmp_path, monkeypatch, capsys):
    def fail(model, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(compare, "run_recbole_mql", fail)
    assert cli_main(["--compare=Pop", "--dataset=Scientific", f"--data_path={workdir / 'data'}",
                     f"--results_dir={tmp_path}", "--state=WARNING", "--show_progress=False"]) == 1
    assert "Pop failed" in capsys.readouterr().err


def test_tiger_pre_trains(workdir):
    """TIGER's properties have the pretrain_* keys pre-training reads: one task, TIGER's budget."""
    config = Config("TIGER", "Scientific", config_dict=tiger_config(
        workdir, pretrain_datasets=["Scientific", "Sci100"], pretrain_epochs=1))
    domains = pretraining_configs(config)
    assert [d["dataset"] for d in domains] == ["Scientific", "Sci100"]
    assert all(d["tasks"] == ["seqrec"] and d["epochs"] == 1 for d in domains)
    result = run_recbole_mql("TIGER", "Scientific", config_dict=tiger_config(
        workdir, checkpoint_dir=str(workdir / "pretrain"), pretrain_datasets=["Sci100"], pretrain_epochs=1, epochs=1,
        pretrain_train_batch_size=256, pretrain_gradient_accumulation_steps=1))
    assert 0 <= result["test_result"]["hit@10"] <= 1
    assert any(f.startswith("TIGER-pretrain-Sci100") for f in os.listdir(workdir / "pretrain"))
