"""Two CPU processes (torchrun, gloo) against one: same metrics, one log, one checkpoint writer."""

import glob
import os
import re
import subprocess
import sys

import pytest
import torch
from dataset_prep.atomic import convert
from recbole_mql.distributed import Launch, backend_for, recbole_launch, shard_range, torchrun_launch
from tests.conftest import REPO, SMALL_T5, subset_source


def test_shards_cover_every_user_once_in_order():
    for n in (0, 1, 5, 17, 100):
        for world in (1, 2, 3, 8):
            blocks = [shard_range(n, r, world) for r in range(world)]
            covered = [i for start, end in blocks for i in range(start, end)]
            assert covered == list(range(n))
            sizes = [end - start for start, end in blocks]
            assert max(sizes) - min(sizes) <= 1


def test_launch_from_recbole_keys_and_torchrun(monkeypatch):
    # RecBole's keys: rank = local_rank + offset, world_size defaults to nproc, tcp rendezvous
    launch = recbole_launch({"local_rank": 1, "nproc": 2, "world_size": 4, "offset": 2, "ip": "h0", "port": 7})
    assert (launch.rank, launch.local_rank, launch.world_size, launch.init_method) == (3, 1, 4, "tcp://h0:7")
    assert recbole_launch({"local_rank": 0, "nproc": 2}).world_size == 2
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torchrun_launch() is None
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert torchrun_launch() == Launch(5, 1, 8, "env://")
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    convert("Instruments", subset_source("Instruments", 300, str(root / "src")), str(root / "data"))
    return str(root / "data")


def test_trainer_makes_its_folder_where_another_rank_may_too(data_path, tmp_path, monkeypatch):
    """RecBole's trainer checks that the checkpoint folder exists and then creates it; in CI another rank
    created it between the two and this rank failed (FileExistsError). Here the other rank always wins
    that race: the trainer must be built all the same, for RecBole's models and ours."""
    import recbole.trainer.trainer as recbole_trainer
    from recbole.utils import init_seed
    from recbole_mql.config import Config
    from recbole_mql.data.preparation import load_data
    from recbole_mql.utils import get_model, get_trainer
    from tests.conftest import quiet_config

    def racing_ensure_dir(path):
        if os.path.exists(path):
            return
        os.makedirs(path)  # the other rank, just after this rank found the folder missing
        os.makedirs(path)

    monkeypatch.setattr(recbole_trainer, "ensure_dir", racing_ensure_dir)
    for model, extra in (("SASRec", {"epochs": 1}), ("MQL4GRec", {**SMALL_T5, "num_layers": 1,
                                                                  "num_decoder_layers": 1})):
        folder = tmp_path / model / "saved"
        config = Config(model, "Instruments", config_dict=quiet_config(
            data_path=data_path, checkpoint_dir=str(folder), **extra))
        init_seed(config["seed"], config["reproducibility"])
        _, train, _, _ = load_data(config)
        net = get_model(model)(config, train._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
        assert os.path.dirname(trainer.saved_model_file) == str(folder) and folder.is_dir()


def failure(out):
    """What a failed run printed, each rank's own lines first (torchrun's summary buries them)."""
    ranks = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if line.startswith("[rank"))
    return ranks[-6000:] + "\n---\n" + out.stdout[-2000:] + out.stderr[-2000:]


def run(folder, data_path, nproc, *extra):
    """Train + test MQL4GRec (three tasks, the fusion task draws coins; accumulation 2) from the CLI in
    ``nproc`` processes; dropout off and fp32, so that runs differ only by floating-point order."""
    folder.mkdir()
    args = [
        "--model=MQL4GRec", "--dataset=Instruments", f"--data_path={data_path}", "--epochs=3",
        "--train_batch_size=64", "--gradient_accumulation_steps=2", "--learning_rate=0.005",
        "--tasks=['seqrec','fusionseqrec','item2image']", "--dropout_rate=0", "--autocast_dtype=none",
        "--valid_users=0", "--checkpoint_dir=saved", "--show_progress=False",
        *[f"--{k}={v}" for k, v in SMALL_T5.items()], *extra,
    ]
    script = os.path.join(REPO, "run_recbole_mql.py")
    launcher = [sys.executable, script] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    out = subprocess.run(launcher + args, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, failure(out)
    logs = glob.glob(str(folder / "log" / "MQL4GRec" / "*.log"))
    assert len(logs) == 1, logs  # one log file, written by rank 0 only
    with open(logs[0]) as f:
        log = f.read()
    assert out.stdout.count("test result:") == 1  # rank 0 alone prints the result
    return log


def metrics(log, label):
    """The last ``label`` metrics dict of a RecBole log, e.g. ``best valid`` or ``test result``."""
    line = re.findall(rf"{label}\s*:\s*(.*)", log)[-1]
    return {k: float(v) for k, v in re.findall(r"'([a-z]+@\d+)', (?:np\.float64\()?([0-9.]+)", line)}


def test_two_processes_give_the_single_process_run(data_path, tmp_path):
    single = run(tmp_path / "one", data_path, 1)
    dist = run(tmp_path / "two", data_path, 2)
    users = 300

    # the same global batches and synchronised gradients: every epoch's token loss matches (ranks
    # training apart, or on other samples, would drift by percents)
    losses = [[float(x) for x in re.findall(r"train loss: ([0-9.]+)", log)] for log in (single, dist)]
    # (rel 3e-4: summation-order noise that Adam grows over 3 epochs reached 1.5e-4 with the optimiser's
    # parameter groups; a rank training apart drifts by percents)
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=3e-4)
    # the weights differ by floating-point summation order only (Adam turns that noise into steps of
    # up to lr on near-zero gradients), so at most one user's ranking may move
    for label in ("best valid ", "test result"):
        a, b = metrics(single, label), metrics(dist, label)
        assert a.keys() == b.keys() and a["hit@10"] > 0
        assert all(abs(a[k] - b[k]) <= 1.01 / users for k in a), (label, a, b)

    # only rank 0 wrote checkpoints: one best (rank 0's timestamp) and one last state
    saved = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "two" / "saved" / "*.pth")))
    assert len(saved) == 2 and "MQL4GRec-Instruments-last.pth" in saved, saved

    # the same model evaluated by two processes gives exactly the single process's metrics: start
    # from the single run's best model, one epoch at learning rate 0, then validate and test
    best = [p for p in glob.glob(str(tmp_path / "one" / "saved" / "*.pth")) if not p.endswith("-last.pth")]
    frozen = run(tmp_path / "frozen", data_path, 2, f"--pretrained_checkpoint={best[0]}", "--epochs=1",
                 "--learning_rate=0", "--weight_decay=0")
    assert metrics(frozen, "best valid ") == metrics(single, "best valid ")
    assert metrics(frozen, "test result") == metrics(single, "test result")
