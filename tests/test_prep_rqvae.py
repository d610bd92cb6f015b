"""RQ-VAE training, collision-free re-assignment and resumable stages, on MiniLM features of real
Scientific items (a small model and small codebooks keep it fast and force collisions); the choice
of device and of the k-means backend (CUDA itself: tests/test_gpu_prep.py)."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from dataset_prep import collisions, rqvae, text_features
from dataset_prep.cli import main as cli_main
from dataset_prep.cli import stage_main as main
from dataset_prep.device import resolve_device
from dataset_prep.io import PrepError
from tests.conftest import fixture_dir

N_ITEMS = 256


@pytest.fixture(scope="module")
def features():
    """MiniLM features [256, 384] of the first Scientific items (titles and descriptions, 32 tokens)."""
    fields = text_features.item_fields(os.path.join(fixture_dir("Scientific"), "Scientific.item.json"))[:N_ITEMS]
    tokenizer, model = text_features.load_text_encoder(text_features.default_model_path())
    return text_features.text_features(fields, tokenizer, model, batch_size=64, max_length=32, progress=False)


def small_config(**changes):
    values = dict(hidden=[128, 64], code_dim=16, codebook_size=8, kmeans_iters=20, batch_size=64,
                  epochs=12, eval_every=4, seed=7, device="cpu")
    values.update(changes)
    return rqvae.RQVAEConfig.from_dict(values)


@pytest.fixture(scope="module")
def trained(features):
    return rqvae.train_rqvae(features, small_config(), progress=False)


def test_loss_decreases_and_best_checkpoint_kept(trained):
    model, history = trained
    losses = [e["loss"] for e in history["epochs"]]
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == pytest.approx(min(losses), rel=0.05)
    rates = [e["collision_rate"] for e in history["epochs"] if "collision_rate" in e]
    assert len(rates) == 3 and history["best_collision_rate"] == min(rates)
    assert history["best_epoch"] == 4 * (rates.index(min(rates)) + 1)


def test_codebooks_start_from_kmeans(features):
    import faiss

    config = small_config()
    torch.manual_seed(config.seed)
    model = rqvae.RQVAE(features.shape[1], config)
    x = torch.from_numpy(features)
    with torch.no_grad():
        z = model.encoder(x).numpy()
    assert not bool(model.initialized)
    model.init_codebooks(x, config.kmeans_iters, config.seed)
    kmeans = faiss.Kmeans(z.shape[1], config.codebook_size, niter=config.kmeans_iters, seed=config.seed)
    kmeans.train(np.ascontiguousarray(z))
    assert bool(model.initialized)
    np.testing.assert_allclose(model.codebook_arrays()[0], kmeans.centroids, atol=1e-5)


def test_same_seed_same_codes(features, trained):
    model, history = trained
    again, history_again = rqvae.train_rqvae(features, small_config(), progress=False)
    x = torch.from_numpy(features)
    np.testing.assert_array_equal(model.encode_codes(x)[0], again.encode_codes(x)[0])
    assert [e["loss"] for e in history["epochs"]] == [e["loss"] for e in history_again["epochs"]]


def test_sinkhorn_balances_a_skewed_batch():
    generator = torch.Generator().manual_seed(0)
    distances = torch.rand(64, 4, generator=generator)
    distances[:, 0] -= 1.0      # nearest code: code 0 for every row
    assert distances.argmin(1).tolist() == [0] * 64
    counts = torch.bincount(rqvae.sinkhorn_assign(distances, 0.003, 50), minlength=4)
    assert counts.min() >= 12 and counts.max() <= 20


def test_reassignment_on_real_features_leaves_no_collision(features):
    model, _ = rqvae.train_rqvae(features, small_config(codebook_size=4, epochs=4), progress=False)
    codes, residuals = model.encode_codes(torch.from_numpy(features))
    codebooks = model.codebook_arrays()
    groups = collisions.collision_groups(codes)
    assert len(groups) > 5      # 4 codes per level force collisions
    new, moved = collisions.reassign(codes, residuals, codebooks)
    assert collisions.code_summary(new, 4)["collision_rate"] == 0.0
    assert len(moved) == sum(len(g) - 1 for g in groups.values())
    for code, items in groups.items():
        keeper = collisions.ranked_group(items, code, residuals.astype(np.float64), codebooks.astype(np.float64))[0]
        distances = [np.sum((residuals[i, -1] - codebooks[-1][code[-1]]) ** 2) for i in items]
        assert keeper == items[int(np.argmin(distances))]
        assert tuple(new[keeper]) == code and keeper not in moved
    unmoved = [i for i in range(len(codes)) if i not in moved]
    np.testing.assert_array_equal(new[unmoved], codes[unmoved])
    suffixed = collisions.add_suffix(codes, residuals, codebooks)
    assert suffixed.shape == (N_ITEMS, 5) and collisions.code_summary(suffixed, 4)["collision_rate"] == 0.0


def test_reassignment_rule_on_a_hand_checked_case():
    """Level 1 codes 0, 10, 20; level 2 codes 0, 1, 2. Four items all coded (0, 0)."""
    codebooks = np.array([[[0.0], [10.0], [20.0]], [[0.0], [1.0], [2.0]]])
    level1 = np.array([0.1, 0.3, 0.2, 0.4])
    residuals = np.stack([level1, level1], axis=1)[:, :, None]     # level-2 residual = level-1 residual - 0
    new, moved = collisions.reassign(np.zeros((4, 2), dtype=int), residuals, codebooks)
    # item 0 is closest and keeps (0, 0); item 2 takes the next-nearest last code, item 1 the one after;
    # item 3 finds prefix 0 full and moves to the next-nearest first-level code, 10.
    assert new.tolist() == [[0, 0], [0, 2], [0, 1], [1, 0]]
    assert sorted(moved) == [1, 2, 3]


def test_code_summary_and_plot(tmp_path):
    codes = np.array([[0, 1], [0, 1], [1, 2], [2, 3]])
    summary = collisions.code_summary(codes, 4)
    assert summary["collision_rate"] == 0.25 and summary["colliding_items"] == 2
    assert summary["levels"][1]["used"] == 3
    assert summary["levels"][0]["perplexity"] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25))))
    collisions.plot_code_usage(codes, 4, str(tmp_path / "usage.png"))
    assert (tmp_path / "usage.png").read_bytes()[:4] == b"\x89PNG"


def test_joint_training_needs_one_feature_width():
    with pytest.raises(PrepError, match="same encoder"):
        rqvae.stack_features([np.zeros((3, 4)), np.zeros((3, 5))], ["A", "B"])


def test_stages_are_cached_and_force_redoes(tmp_path, features):
    out, data_path = tmp_path / "out", tmp_path / "dataset"
    (out / "Toy").mkdir(parents=True)
    np.save(out / "Toy" / "Toy.text_x.npy", features[:64])
    (out / "Toy" / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": list(range(3, 64))}))
    config = tmp_path / "rqvae.yaml"
    config.write_text("hidden: [32]\ncode_dim: 8\ncodebook_size: 8\nkmeans_iters: 5\nbatch_size: 32\n"
                      "epochs: 2\neval_every: 1\nseed: 1\n")
    train = ["rqvae", "--datasets", "Toy", "--feature", "text_x", "--out", str(out),
             "--rqvae_config", str(config), "--quiet"]
    checkpoint = out / "rqvae" / "text_x__Toy.pt"
    main(train)
    stamp = checkpoint.stat().st_mtime_ns
    main(train)
    assert checkpoint.stat().st_mtime_ns == stamp            # cached: skipped
    main(train + ["--force"])
    assert checkpoint.stat().st_mtime_ns != stamp            # redone
    main(["codes", "--datasets", "Toy", "--feature", "text_x", "--out", str(out), "--data_path", str(data_path),
          "--quiet"])
    codes = json.loads((out / "Toy" / "Toy.index_text_x.json").read_text())
    assert len(codes) == 64 and len({tuple(c) for c in codes.values()}) == 64
    assert codes["0"][0].startswith("<a_") and codes["0"][3].startswith("<d_")
    header = (data_path / "Toy" / "Toy.item").read_text().splitlines()[0]
    assert header == "item_id:token\ttext_code:token_seq"


# --- devices ----------------------------------------------------------------------------------

def _cuda(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def _faiss_gpus(monkeypatch, count, gpu_build=True):
    """faiss as if it reported ``count`` GPUs; ``gpu_build``: faiss-gpu (GPU resources) vs faiss-cpu."""
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: count)
    if gpu_build:
        monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    else:
        monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)


def test_auto_device_is_cuda_only_where_torch_sees_one(monkeypatch):
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    _cuda(monkeypatch, False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" CPU ") == "cpu"
    with pytest.raises(PrepError, match=r"--device 'cuda:0': torch sees no CUDA device"):
        resolve_device("cuda:0")
    _cuda(monkeypatch, True)
    assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("faiss_gpus,gpu_build,torch_cuda,device,expected", [
    (0, False, False, "auto", (None, "k-means: faiss-cpu on the host (device cpu)")),
    (2, True, False, "auto", (None, "k-means: faiss-cpu on the host (device cpu)")),   # torch without CUDA
    (2, True, True, "cpu", (None, "k-means: faiss-cpu on the host (device cpu)")),     # CPU asked for
    (0, False, True, "auto", (None, "k-means: faiss-cpu on the host (faiss-gpu not installed)")),
    (0, True, True, "auto", (None, "k-means: faiss-cpu on the host (no GPU visible)")),
    (1, True, True, "auto", (0, "k-means: faiss on GPU 0")),
    (2, True, True, "cuda:1", (1, "k-means: faiss on GPU 1")),
    (1, True, True, "cuda:1", (None, "k-means: faiss-cpu on the host (faiss sees 1 GPU(s), not cuda:1)")),
])
def test_kmeans_backend_follows_faiss_gpus_and_the_device(monkeypatch, faiss_gpus, gpu_build, torch_cuda, device,
                                                          expected):
    _faiss_gpus(monkeypatch, faiss_gpus, gpu_build)
    _cuda(monkeypatch, torch_cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rqvae.kmeans_backend(resolve_device(device)) == expected


def test_training_logs_its_device_and_the_kmeans_backend(caplog):
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="dataset_prep.rqvae"):
        rqvae.train_rqvae(x, small_config(hidden=[16], code_dim=4, kmeans_iters=2, epochs=1), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "dataset_prep.rqvae"]
    assert lines[0] == "rq-vae: training on cpu (64 items, seed 7)"
    assert lines[1] == "k-means: faiss-cpu on the host (device cpu)"


def test_unknown_device_is_one_error_line(capsys):
    assert cli_main(["rqvae", "--datasets", "Toy", "--feature", "text_x", "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device 'gpu': unknown device; accepted: auto (cuda when torch sees a GPU, else cpu), "
                   "cpu, cuda, cuda:<index>."]
    with pytest.raises(PrepError, match=r"rq\.yaml: device 'tpu': unknown device; accepted: auto"):
        rqvae.RQVAEConfig.from_dict({"device": "tpu"}, "rq.yaml")


def test_device_auto_on_a_cpu_machine_keeps_the_cpu_caches(tmp_path, monkeypatch):
    """``auto`` resolves before the cache key is made: on a machine without CUDA, stages run with
    ``--device cpu`` (or before ``auto`` existed) are reused as they are."""
    _cuda(monkeypatch, False)
    out = tmp_path / "out"
    (out / "Toy").mkdir(parents=True)
    np.save(out / "Toy" / "Toy.text_x.npy", np.random.default_rng(1).normal(size=(32, 12)).astype(np.float32))
    config = tmp_path / "rqvae.yaml"
    config.write_text("hidden: [16]\ncode_dim: 4\ncodebook_size: 4\nkmeans_iters: 2\nbatch_size: 16\n"
                      "epochs: 1\neval_every: 1\nseed: 1\n")
    train = ["rqvae", "--datasets", "Toy", "--feature", "text_x", "--out", str(out), "--rqvae_config", str(config),
             "--quiet"]
    codes = ["codes", "--datasets", "Toy", "--feature", "text_x", "--out", str(out),
             "--data_path", str(tmp_path / "dataset")]
    main(train + ["--device", "cpu"])
    main(codes + ["--device", "cpu"])
    checkpoint, code_file = out / "rqvae" / "text_x__Toy.pt", out / "Toy" / "Toy.index_text_x.json"
    stamps = checkpoint.stat().st_mtime_ns, code_file.stat().st_mtime_ns
    main(train + ["--device", "auto"])
    main(train)                 # the YAML's device: auto by default
    main(codes)
    assert (checkpoint.stat().st_mtime_ns, code_file.stat().st_mtime_ns) == stamps
    assert rqvae.load_checkpoint(str(checkpoint))[0].config.device == "cpu"
    summary = json.loads((out / "rqvae" / "text_x__Toy.pt.meta.json").read_text())["summary"]
    assert summary["device"] == "cpu"
