"""Text features with the shipped MiniLM on real Scientific items; image features with a tiny
randomly initialised open_clip model saved to a local folder; clear errors when offline."""

import json
import os

import numpy as np
import pytest
import torch

from dataset_prep import image_features, text_features
from dataset_prep.io import PrepError
from tests.conftest import fixture_dir


@pytest.fixture(scope="module")
def minilm():
    return text_features.load_text_encoder(text_features.default_model_path())


@pytest.fixture(scope="module")
def scientific_fields():
    return text_features.item_fields(os.path.join(fixture_dir("Scientific"), "Scientific.item.json"))


def test_text_features_shape_and_determinism(minilm, scientific_fields):
    tokenizer, model = minilm
    fields = scientific_fields[:6]
    first = text_features.text_features(fields, tokenizer, model, batch_size=4, max_length=64, progress=False)
    second = text_features.text_features(fields, tokenizer, model, batch_size=4, max_length=64, progress=False)
    assert first.shape == (6, 384) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    # title and description are averaged: the item vector lies between the two field vectors
    title, description = text_features.encode(list(fields[0]), tokenizer, model, max_length=64, progress=False)
    np.testing.assert_allclose(first[0], (title + description) / 2, atol=1e-5)


def test_pooling_ignores_padding(minilm, scientific_fields):
    tokenizer, model = minilm
    short, long = scientific_fields[0][0], scientific_fields[1][1]
    alone = text_features.encode([short], tokenizer, model, max_length=128, progress=False)
    padded = text_features.encode([short, long], tokenizer, model, batch_size=2, max_length=128, progress=False)
    assert len(tokenizer(long)["input_ids"]) > 2 * len(tokenizer(short)["input_ids"])  # really padded
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, -1e6]]])
    assert text_features.mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_item_text_is_cleaned_and_empty_fields_skipped(minilm, tmp_path):
    items = {"0": {"title": "Pens &amp; Pencils", "description": "['<b>Blue</b> ink', '']"},
             "1": {"title": "Stapler", "description": ""}}
    path = tmp_path / "X.item.json"
    path.write_text(json.dumps(items))
    fields = text_features.item_fields(str(path))
    assert fields[0] == ("Pens & Pencils", "Blue ink") and fields[1] == ("Stapler", "")
    tokenizer, model = minilm
    vectors = text_features.text_features(fields, tokenizer, model, progress=False)
    np.testing.assert_allclose(vectors[1], text_features.encode(["Stapler"], tokenizer, model, progress=False)[0],
                               atol=1e-5)
    (tmp_path / "Y.item.json").write_text(json.dumps({"3": items["0"]}))
    with pytest.raises(PrepError, match="0..0"):
        text_features.item_fields(str(tmp_path / "Y.item.json"))


def test_offline_hub_names_give_clear_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrepError, match="--text_model"):
        text_features.load_text_encoder("no-such-org/no-such-model")
    with pytest.raises(PrepError, match="--clip_weights"):
        image_features.load_clip("ViT-L-14", "openai")


def tiny_clip_folder(folder):
    """A randomly initialised 16-d CLIP saved as open_clip's local-dir layout; returns the model."""
    import open_clip

    torch.manual_seed(0)
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    model = open_clip.CLIP(**model_cfg).eval()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, f)
    torch.save(model.state_dict(), os.path.join(folder, "open_clip_pytorch_model.bin"))
    return model


def draw_images(folder, names):
    from PIL import Image, ImageDraw

    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        image = Image.new("RGB", (48, 40), (255, 255, 255))
        ImageDraw.Draw(image).ellipse((4 + 3 * k, 4, 30 + 4 * k, 36), fill=(40 * k, 200 - 50 * k, 90))
        image.save(os.path.join(folder, f"{name}.jpg"))


def test_image_features_with_a_local_tiny_clip(tmp_path):
    reference = tiny_clip_folder(str(tmp_path / "tiny-clip"))
    draw_images(str(tmp_path / "images"), ["B0001", "B0002", "B0003"])
    item2id = {"B0001": 0, "B0002": 1, "B0003": 2}
    paths = image_features.image_paths(3, str(tmp_path / "images"), item2id)
    model, preprocess = image_features.load_clip(f"local-dir:{tmp_path / 'tiny-clip'}")
    vectors = image_features.encode_images(paths, model, preprocess, batch_size=2, progress=False)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, image_features.encode_images(paths, model, preprocess, progress=False))
    with torch.no_grad():   # the saved weights were loaded, and the vectors are not normalised
        expected = reference.encode_image(torch.stack([image_features._load_image(p, preprocess) for p in paths]))
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    with pytest.raises(PrepError, match="1 of 4 items have no image"):
        image_features.image_paths(4, str(tmp_path / "images"), item2id)


def test_image_stage_through_the_cli(tmp_path):
    from dataset_prep.cli import stage_main as main

    tiny_clip_folder(str(tmp_path / "tiny-clip"))
    draw_images(str(tmp_path / "images"), ["B0001", "B0002"])
    folder = tmp_path / "out" / "Toy"
    folder.mkdir(parents=True)
    (folder / "Toy.item.json").write_text(json.dumps({"0": {"title": "a"}, "1": {"title": "b"}}))
    (folder / "Toy.item2id").write_text("B0002\t0\nB0001\t1\n")
    main(["image", "--datasets", "Toy", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
          "--clip_arch", f"local-dir:{tmp_path / 'tiny-clip'}", "--quiet"])
    vectors = np.load(folder / "Toy.image_tiny-clip.npy")
    model, preprocess = image_features.load_clip(f"local-dir:{tmp_path / 'tiny-clip'}")
    expected = image_features.encode_images([str(tmp_path / "images" / "B0002.jpg")], model, preprocess,
                                            progress=False)
    np.testing.assert_allclose(vectors[:1], expected, atol=1e-6)   # row 0 is item 0 = B0002
