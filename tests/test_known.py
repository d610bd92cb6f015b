"""Datasets by name (issue 13): with no local source, a known dataset is downloaded (here from a mirror on
the loopback) and converted; Arts/Games-like datasets without codes run text [+ image] -> RQ-VAE ->
codes -> atomic files. Served files are real slices (tests/fixtures/small) with their pins set to them."""

import gzip
import hashlib
import io
import json
import os

import pytest

from dataset_prep import download, known
from dataset_prep.cli import main as prep_main
from dataset_prep.download import KnownDataset, Pin
from tests.conftest import fixture_dir, quiet_config


def serve(loopback, monkeypatch, name, files, has_codes):
    """Serve ``files`` ({file name: bytes}) as ``<mirror>/<name>/<file>`` and pin the known dataset to them."""
    pins = {}
    for filename, body in files.items():
        loopback.files[f"/mirror/{name}/{filename}"] = body
        pins[filename] = Pin(len(body), hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(download.KNOWN_DATASETS, name, KnownDataset("owner/repo", "0" * 40, f"data/{name}", pins,
                                                                     has_codes=has_codes))
    return f"{loopback.url}/mirror"


@pytest.fixture
def instruments_mirror(loopback, monkeypatch, tmp_path):
    folder = fixture_dir("Instruments")
    files = {}
    for f in ("Instruments.inter.json", "Instruments.index_lemb.json", "Instruments.index_vitemb.json"):
        with open(os.path.join(folder, f), "rb") as fh:
            files[f] = fh.read()
    monkeypatch.delenv("RECBOLE_MQL_SOURCE", raising=False)
    monkeypatch.setenv("RECBOLE_MQL_CACHE", str(tmp_path / "cache"))
    return serve(loopback, monkeypatch, "Instruments", files, has_codes=True)


def test_run_downloads_by_name_then_converts(instruments_mirror, loopback, tmp_path, monkeypatch):
    from recbole_mql.config import Config
    from recbole_mql.data.preparation import prepare_atomic_files

    monkeypatch.chdir(tmp_path)
    config = Config("Pop", "Instruments", config_dict=quiet_config(
        data_path=str(tmp_path / "dataset"), data_url=instruments_mirror))
    prepare_atomic_files(config)
    assert len(loopback.requests) == 3
    with open(tmp_path / "dataset" / "Instruments" / "Instruments.item") as f:
        assert f.readline().split() == ["item_id:token", "text_code:token_seq", "image_code:token_seq"]
        assert len(f.readlines()) == 2923
    assert sorted(os.listdir(tmp_path / "cache" / "Instruments")) == sorted(
        ["Instruments.inter.json", "Instruments.index_lemb.json", "Instruments.index_vitemb.json"])
    prepare_atomic_files(config)  # atomic files there: nothing downloaded again
    assert len(loopback.requests) == 3


def test_local_source_wins_over_the_download(instruments_mirror, loopback, tmp_path):
    summary = known.ensure_dataset("Instruments", str(tmp_path / "data"), source=fixture_dir("Instruments"),
                                   options=known.PrepOptions(data_url=instruments_mirror))
    assert summary["items"] == 2923 and loopback.requests == []


def test_cli_by_name_and_offline_is_one_line(instruments_mirror, loopback, tmp_path, capsys):
    assert prep_main(["Instruments", "--data_path", str(tmp_path / "data"), "--data_url", instruments_mirror]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stages"] == ["download", "atomic"] and summary["users"] == 600
    assert prep_main(["Instruments", "--data_path", str(tmp_path / "other"), "--cache", str(tmp_path / "empty"),
                      "--data_url", "http://127.0.0.1:9/mirror"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1
    assert err[0].startswith("error: Cannot download http://127.0.0.1:9/mirror/Instruments/Instruments.")
    assert "$RECBOLE_MQL_DATA_URL" in err[0] and "--source" in err[0]


# --- a dataset published without codes (as Arts and Games are) ------------------------------------

N_ITEMS = 48


def jpeg(k):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (40, 40), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((k % 20, 2, 20 + k % 20, 30), fill=(5 * k % 255, 100, 255 - 5 * k % 255))
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def arts_like(loopback, monkeypatch, tmp_path):
    """``Arts`` as MACRec publishes it (interactions, item text, item2id; no codes) made of the first 48
    Scientific items of the slice and the users' interactions with them; its images on the loopback;
    a tiny CLIP and tiny RQ-VAE settings."""
    from tests.test_prep_features import tiny_clip_folder

    with open(os.path.join(fixture_dir("Scientific"), "Scientific.inter.json")) as f:
        sequences = {u: [i for i in s if i < N_ITEMS] for u, s in json.load(f).items()}
    sequences = {u: s for u, s in sequences.items() if len(s) >= 3}
    with open(os.path.join(fixture_dir("Scientific"), "Scientific.item.json")) as f:
        items = {str(i): v for i, v in json.load(f).items() if int(i) < N_ITEMS}
    asins = [f"B{i:09d}" for i in range(N_ITEMS)]
    files = {"Arts.inter.json": json.dumps(sequences).encode(), "Arts.item.json": json.dumps(items).encode(),
             "Arts.item2id": "".join(f"{a}\t{i}\n" for i, a in enumerate(asins)).encode()}
    for i, asin in enumerate(asins):
        loopback.files[f"/img/{asin}_high.jpg"] = jpeg(i)
    meta = tmp_path / "meta_Arts_Crafts_and_Sewing.json.gz"
    with gzip.open(meta, "wt") as f:
        for asin in asins:
            f.write(json.dumps({"asin": asin, "title": "t", "imageURL": [f"{loopback.url}/img/{asin}_small.jpg"],
                                "imageURLHighRes": [f"{loopback.url}/img/{asin}_high.jpg"]}) + "\n")
    tiny_clip_folder(str(tmp_path / "tiny-clip"))
    rqvae_yaml = tmp_path / "rqvae.yaml"
    rqvae_yaml.write_text("hidden: [32]\ncode_dim: 8\nlevels: 3\ncodebook_size: 8\nsinkhorn_epsilon: [0.0, 0.0, 0.0]\n"
                          "kmeans_iters: 5\nbatch_size: 16\nepochs: 2\neval_every: 1\nseed: 1\n")
    monkeypatch.delenv("RECBOLE_MQL_SOURCE", raising=False)
    mirror = serve(loopback, monkeypatch, "Arts", files, has_codes=False)
    options = known.PrepOptions(data_url=mirror, cache_dir=str(tmp_path / "cache"), rqvae_config=str(rqvae_yaml),
                                image_meta=str(meta), clip_arch=f"local-dir:{tmp_path / 'tiny-clip'}",
                                image_workers=4, progress=False)
    return options, sequences


def read_item_file(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


def test_arts_like_dataset_end_to_end(arts_like, tmp_path, loopback):
    options, sequences = arts_like
    summary = known.ensure_dataset("Arts", str(tmp_path / "dataset"), options=options)
    assert summary["stages"] == ["download", "text", "rqvae:text", "codes:text", "images", "image", "rqvae:image",
                                 "codes:image", "atomic"]
    assert summary["images"]["status"] == "coded" and summary["images"]["downloaded"] == N_ITEMS
    header, rows = read_item_file(tmp_path / "dataset" / "Arts" / "Arts.item")
    assert sorted(header) == ["image_code:token_seq", "item_id:token", "text_code:token_seq", "title:token_seq"]
    used = {i for s in sequences.values() for i in s}
    assert sorted(int(r[0]) for r in rows) == sorted(used)
    text, image = (header.index(f"{m}_code:token_seq") for m in ("text", "image"))
    assert len({r[text] for r in rows}) == len({r[image] for r in rows}) == len(rows)  # collision-free codes
    assert all(r[text].startswith("<a_") and r[image].startswith("<A_") for r in rows)
    cache = tmp_path / "cache" / "prep" / "Arts"
    assert sorted(f for f in os.listdir(cache) if f.startswith("Arts.index_")) == [
        "Arts.index_image.json", "Arts.index_text.json"]
    assert not any("_small" in r for r in loopback.requests)  # the high-resolution image was enough

    # everything is cached: a second run from scratch (new atomic folder) downloads nothing
    before = len(loopback.requests)
    again = known.ensure_dataset("Arts", str(tmp_path / "dataset2"), options=options)
    assert again["images"]["present"] == N_ITEMS and len(loopback.requests) == before


def test_arts_like_dataset_without_every_image_keeps_text_codes(arts_like, tmp_path, loopback):
    options, _ = arts_like
    del loopback.files["/img/B000000003_high.jpg"]  # high-res and low-res both missing for one item
    summary = known.ensure_dataset("Arts", str(tmp_path / "dataset"), options=options)
    assert summary["stages"] == ["download", "text", "rqvae:text", "codes:text", "images", "atomic"]
    assert summary["images"]["status"] == "incomplete" and "1 of 48 items have no valid image" in \
        summary["images"]["reason"]
    header, _ = read_item_file(tmp_path / "dataset" / "Arts" / "Arts.item")
    assert header == ["item_id:token", "text_code:token_seq", "title:token_seq"]
    report = json.loads((tmp_path / "cache" / "prep" / "Arts" / "images" / "download_report.json").read_text())
    assert [f["key"] for f in report["failures"]] == ["B000000003"]


def test_no_image_urls_means_text_codes_only(arts_like, tmp_path):
    options, _ = arts_like
    options.image_meta = None
    summary = known.ensure_dataset("Arts", str(tmp_path / "dataset"), options=options)
    assert summary["stages"] == ["download", "text", "rqvae:text", "codes:text", "atomic"]
    assert summary["images"]["status"] == "none" and "prep_image_meta" in summary["images"]["reason"]
