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
