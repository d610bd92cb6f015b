"""Source files -> atomic files: fields, ids, collisions and clear errors on bad input."""

import json
import os
import shutil

import pytest

from dataset_prep.cli import main as prep_main
from dataset_prep.atomic import convert, ensure_atomic_files
from dataset_prep.io import PrepError
from tests.conftest import fixture_dir, source_dir


def read_atomic(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


def check_instruments_atomic(data_path, source):
    """What holds for any conversion of Instruments (whole or slice): fields, timestamps as positions,
    published image codes kept, a collision level on every text code. Returns (rows, sequences,
    text codes, suffixes) for the counts each test checks."""
    folder = os.path.join(data_path, "Instruments")
    header, rows = read_atomic(os.path.join(folder, "Instruments.inter"))
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    with open(os.path.join(source, "Instruments.inter.json")) as f:
        sequences = json.load(f)
    # timestamps are positions: the user's rows read back in the source's order
    first_user = [r for r in rows if r[0] == "5"]
    assert [int(r[1]) for r in sorted(first_user, key=lambda r: float(r[2]))] == sequences["5"]

    header, items = read_atomic(os.path.join(folder, "Instruments.item"))
    assert header == ["item_id:token", "text_code:token_seq", "image_code:token_seq"]
    text = {r[0]: r[1] for r in items}
    image = {r[0]: r[2] for r in items}
    assert len(set(text.values())) == len(set(image.values())) == len(items), "codes unique after disambiguation"
    with open(os.path.join(source, "Instruments.index_vitemb.json")) as f:
        assert image["0"].split() == json.load(f)["0"]
    suffixes = [t.split()[-1] for t in text.values()]
    assert all(s.startswith("<e_") for s in suffixes)
    return rows, sequences, text, suffixes


@pytest.mark.full_data
def test_instruments_atomic_files(instruments_atomic):
    rows, _, text, suffixes = check_instruments_atomic(instruments_atomic, source_dir("Instruments"))
    assert len(rows) == 136226 and len(text) == 6250
    # the 262 published collisions: 524 items carry <e_k>, k>0 for the later members of a group
    assert sum(s != "<e_0>" for s in suffixes) == 262


def test_instruments_slice_atomic_files(instruments_small_atomic):
    """The shipped slice (600 users) converts as the whole data does (test above, full_data)."""
    from collections import Counter

    rows, sequences, text, suffixes = check_instruments_atomic(instruments_small_atomic, fixture_dir("Instruments"))
    assert len(rows) == sum(map(len, sequences.values())) == 6583 and len(text) == 2923
    with open(os.path.join(fixture_dir("Instruments"), "Instruments.index_lemb.json")) as f:
        shared = Counter(tuple(code) for code in json.load(f).values())
    assert sum(s != "<e_0>" for s in suffixes) == sum(n - 1 for n in shared.values()) > 0


@pytest.mark.parametrize("source,n_items", [
    (lambda: fixture_dir("Scientific"), 856),
    pytest.param(lambda: source_dir("Scientific"), 4344, marks=pytest.mark.full_data),
], ids=["slice", "full"])
def test_scientific_has_title(tmp_path, source, n_items):
    summary = convert("Scientific", source(), str(tmp_path))
    assert summary["items"] == n_items and summary["text_colliding_items"] == 0
    header, items = read_atomic(tmp_path / "Scientific" / "Scientific.item")
    assert header == ["item_id:token", "text_code:token_seq", "title:token_seq"]
    assert items[0][2].startswith("SUPCO SPP6 Relay")
    assert all("\t" not in r[2] and r[2] for r in items)


def make_source(tmp_path, inter, codes, name="Toy"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / f"{name}.inter.json").write_text(inter if isinstance(inter, str) else json.dumps(inter))
    (src / f"{name}.index_x.json").write_text(json.dumps(codes))
    return str(src)


def test_missing_source_folder_is_named(tmp_path):
    with pytest.raises(PrepError, match="Source folder not found: .*nowhere.*--source"):
        convert("Toy", str(tmp_path / "nowhere"), str(tmp_path))


def test_malformed_json_names_file(tmp_path):
    src = make_source(tmp_path, '{"0": [1, 2', {"1": ["<a_1>"], "2": ["<a_2>"]})
    with pytest.raises(PrepError, match=r"Toy.inter.json is not valid JSON \(line 1"):
        convert("Toy", src, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "Toy").exists()


def test_item_without_code_is_refused(tmp_path):
    src = make_source(tmp_path, {"0": [1, 2, 3]}, {"1": ["<a_1>"], "2": ["<a_2>"]})
    with pytest.raises(PrepError, match=r"index_x.json: 1 items .* have no text code \(e.g. 3\)"):
        convert("Toy", src, str(tmp_path / "out"))


def test_collisions_error_rule_and_suffix_rule(tmp_path):
    codes = {"1": ["<a_1>", "<b_1>"], "2": ["<a_1>", "<b_1>"], "3": ["<a_2>", "<b_0>"]}
    src = make_source(tmp_path, {"0": [1, 2, 3]}, codes)
    with pytest.raises(PrepError, match="2 items share 1 codes"):
        convert("Toy", src, str(tmp_path / "out"), on_collision="error")
    summary = convert("Toy", src, str(tmp_path / "out"))
    assert summary["text_colliding_items"] == 2
    _, items = read_atomic(tmp_path / "out" / "Toy" / "Toy.item")
    assert {r[0]: r[1] for r in items} == {
        "1": "<a_1> <b_1> <c_0>", "2": "<a_1> <b_1> <c_1>", "3": "<a_2> <b_0> <c_0>"}


def test_first_use_converts_from_env_source(tmp_path, monkeypatch):
    parent = tmp_path / "sources"
    shutil.copytree(fixture_dir("Scientific"), parent / "Scientific")
    monkeypatch.setenv("RECBOLE_MQL_SOURCE", str(parent))
    assert ensure_atomic_files("Scientific", str(tmp_path / "data"))["items"] == 856  # the slice's items
    assert ensure_atomic_files("Scientific", str(tmp_path / "data")) is None  # already there
    monkeypatch.delenv("RECBOLE_MQL_SOURCE")
    with pytest.raises(PrepError, match="Dataset 'Nope' not found.*python -m dataset_prep Nope"):
        ensure_atomic_files("Nope", str(tmp_path / "data"))


def test_cli_reports_error_in_one_line(tmp_path, capsys):
    assert prep_main(["Toy", "--source", str(tmp_path / "missing"), "--data_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Source folder not found")
