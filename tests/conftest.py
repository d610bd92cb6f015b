import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("RECBOLE_MQL_SOURCE") or os.path.join(os.path.dirname(REPO), "shared", "data")
# Models find their dataset's source folder the way a user's shell would tell them.
os.environ.setdefault("RECBOLE_MQL_SOURCE", SHARED_DATA)


def source_dir(name):
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.fail(f"real data folder {path} missing: set RECBOLE_MQL_SOURCE to ../shared/data")
    return path


@pytest.fixture(scope="session")
def instruments_atomic(tmp_path_factory):
    """Atomic files of the real Instruments data, converted once per test session."""
    from dataset_prep.atomic import convert

    data_path = str(tmp_path_factory.mktemp("data"))
    convert("Instruments", source_dir("Instruments"), data_path)
    return data_path


def quiet_config(**extra):
    """Config dict for fast, quiet test runs."""
    cfg = {"show_progress": False, "state": "WARNING", "checkpoint_dir": extra.pop("checkpoint_dir", "saved")}
    cfg.update(extra)
    return cfg


def subset_source(name, n_users, folder):
    """A source folder holding the first ``n_users`` users of a real dataset (codes and text kept)."""
    import json
    import shutil

    src = source_dir(name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(src, f"{name}.inter.json")) as f:
        sequences = json.load(f)
    subset = dict(list(sequences.items())[:n_users])
    with open(os.path.join(folder, f"{name}.inter.json"), "w") as f:
        json.dump(subset, f)
    for file in os.listdir(src):
        if file.startswith(f"{name}.index") or file == f"{name}.item.json":
            shutil.copy(os.path.join(src, file), folder)
    return folder


SMALL_T5 = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16}
