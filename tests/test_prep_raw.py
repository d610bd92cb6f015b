"""Raw Amazon 2018 parsing and the paper's preprocessing on small hand-made gz files."""

import gzip
import json
import os

import pytest

from dataset_prep import raw_amazon
from dataset_prep.io import PrepError
from dataset_prep.cli import stage_main as main

CORE_USERS, CORE_ITEMS = "ABCDE", ["I1", "I2", "I3", "I4", "I5"]


def review_rows():
    """(user, asin, time) rows built so that the 5-core needs three rounds (see test_five_core)."""
    rows = []
    a_times = {"I1": 100, "I2": 10, "I3": 30, "I4": 20, "I5": 40}
    for user in CORE_USERS:
        for item in CORE_ITEMS:
            rows.append((user, item, a_times[item] if user == "A" else 7))
    rows.append(("A", "I1", 50))                      # repeated pair: the earlier time (50) wins
    rows += [("F", i, 1) for i in ("I1", "I2", "I3", "I6", "I7")]
    rows += [(u, "I6", 1) for u in "GHI"] + [("G", "I1", 2), ("H", "I2", 2), ("I", "I3", 2)]
    rows += [(u, "I7", 3) for u in "ABCD"]
    rows += [(u, "I8", 4) for u in CORE_USERS]         # I8 has no metadata
    return rows


def write_gz_lines(path, objects):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj) + "\n")


@pytest.fixture
def raw_files(tmp_path):
    reviews = tmp_path / "Toy_5.json.gz"
    write_gz_lines(reviews, [{"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0}
                             for u, a, t in review_rows()])
    meta = tmp_path / "meta_Toy.json.gz"
    entries = [{"asin": a, "title": f"Item &amp; {a}", "description": [f"<b>About</b> {a}", "more"],
                "brand": "Acme", "category": ["Toys", "Small"], "imageURLHighRes": [f"http://127.0.0.1:9/{a}.jpg"]}
               for a in CORE_ITEMS + ["I6", "I7"]]
    write_gz_lines(meta, entries + [{"asin": "I1", "title": "a repeated meta line is ignored"}])
    return str(reviews), str(meta)


def test_parses_reviews_csv_and_meta(tmp_path, raw_files):
    rows = raw_amazon.read_interactions(raw_files[0])
    assert len(rows) == 46 and rows[0] == ("A", "I1", 100)
    csv_path = tmp_path / "Toy.csv"
    csv_path.write_text("I1,A,5.0,100\nI2,A,4.0,90\n")
    assert raw_amazon.read_interactions(str(csv_path)) == [("A", "I1", 100), ("A", "I2", 90)]
    meta = raw_amazon.read_meta(raw_files[1])
    assert meta["I1"]["title"] == "Item &amp; I1"
    assert raw_amazon.item_record(meta["I1"]) == {"title": "Item &amp; I1", "description": "<b>About</b> I1 more",
                                                  "brand": "Acme", "categories": "Toys,Small"}


def test_duplicates_keep_earliest():
    rows, dropped = raw_amazon.keep_earliest([("u", "x", 9), ("u", "y", 5), ("u", "x", 3), ("v", "x", 1)])
    assert dropped == 1
    assert rows == [("u", "y", 5), ("u", "x", 3), ("v", "x", 1)]


def test_five_core(raw_files):
    """Round 1 drops I6 (4 users) and G, H, I (2 each): F falls to 4. Round 2 drops F: I7 falls to 4.
    Round 3 drops I7. Left: users A-E x items I1-I5."""
    sequences, _, summary = raw_amazon.preprocess(*raw_files, k=5)
    assert set(sequences) == set(CORE_USERS)
    assert all(sorted(seq) == CORE_ITEMS for seq in sequences.values())
    assert sequences["A"] == ["I2", "I4", "I3", "I5", "I1"]   # chronological, I1 at its earliest time 50
    assert sequences["B"] == CORE_ITEMS                         # equal times keep file order
    assert summary == {
        "interactions_read": 46, "users_read": 9, "items_read": 8, "duplicate_pairs_dropped": 1,
        "items_without_metadata": 1, "interactions_of_items_without_metadata": 5,
        "5core_rounds": 3, "5core_users_dropped": 4, "5core_items_dropped": 2, "5core_interactions_dropped": 15,
        "users": 5, "items": 5, "interactions": 25}


def test_images_required_and_offline_download(tmp_path, raw_files):
    images = tmp_path / "images"
    images.mkdir()
    for asin in CORE_ITEMS[:4] + ["I6", "I7"]:
        (images / f"{asin}.jpg").write_bytes(b"jpg")
    _, _, summary = raw_amazon.preprocess(*raw_files, k=1, image_dir=str(images), require_images=True)
    assert summary["items_without_image"] == 1 and summary["interactions_of_items_without_image"] == 5
    with pytest.raises(PrepError, match="--images DIR"):
        raw_amazon.preprocess(*raw_files, k=1, image_dir=str(tmp_path / "cache"), require_images=True, download=True)


def test_raw_stage_writes_processed_files(tmp_path, raw_files):
    out = tmp_path / "out"
    main(["raw", "--name", "Toy", "--reviews", raw_files[0], "--meta", raw_files[1], "--out", str(out), "--quiet"])
    folder = out / "Toy"
    inter = json.loads((folder / "Toy.inter.json").read_text())
    assert inter["0"] == [1, 3, 2, 4, 0]          # user A, items I1..I5 -> ids 0..4
    items = json.loads((folder / "Toy.item.json").read_text())
    assert sorted(items) == ["0", "1", "2", "3", "4"] and items["0"]["brand"] == "Acme"
    assert (folder / "Toy.item2id").read_text().splitlines()[0] == "I1\t0"
    assert (folder / "Toy.user2id").read_text().splitlines()[-1] == "E\t4"
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_missing_raw_file_names_it(tmp_path):
    with pytest.raises(PrepError, match="nothing.json.gz"):
        raw_amazon.read_interactions(str(tmp_path / "nothing.json.gz"))
