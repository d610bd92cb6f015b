"""Test data: small real slices shipped in ``tests/fixtures/small/`` serve every test that does not
need a whole dataset; tests marked ``full_data`` need the real data folder (``$RECBOLE_MQL_SOURCE``,
else ``../shared/data`` beside the repository) and are skipped where it is absent."""

import os
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source root of the shipped slices: <FIXTURES>/<Dataset>/ (see tests/fixtures/README.md).
FIXTURES = os.path.join(REPO, "tests", "fixtures", "small")
# The whole datasets: only the folder the environment names, or the one beside this checkout.
SHARED_DATA = os.environ.get("RECBOLE_MQL_SOURCE") or os.path.join(os.path.dirname(REPO), "shared", "data")
HAVE_FULL_DATA = os.path.isdir(os.path.join(SHARED_DATA, "Instruments"))
# No test reaches the internet: a dataset download that a test did not set up itself fails at once
# (connection refused on the loopback), and nothing is written to the user's cache.
os.environ.setdefault("RECBOLE_MQL_DATA_URL", "http://127.0.0.1:9/tests-never-download")
os.environ.setdefault("RECBOLE_MQL_CACHE", tempfile.mkdtemp(prefix="recbole_mql_test_cache_"))


def pytest_collection_modifyitems(config, items):
    if HAVE_FULL_DATA:
        return
    skip = pytest.mark.skip(reason=f"needs the full data in {SHARED_DATA} (set RECBOLE_MQL_SOURCE)")
    for item in items:
        if "full_data" in item.keywords:
            item.add_marker(skip)


def source_dir(name):
    """A whole real dataset's folder (tests marked ``full_data`` only)."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.fail(f"real data folder {path} missing: mark the test full_data, or set RECBOLE_MQL_SOURCE")
    return path


def fixture_dir(name):
    """The shipped slice of a real dataset (``Instruments``: 600 users, ``Scientific``: 150 users)."""
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="session")
def shared_data():
    """The folder holding the whole datasets (``full_data`` tests)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def instruments_atomic(tmp_path_factory):
    """Atomic files of the whole real Instruments data, converted once per test session."""
    from dataset_prep.atomic import convert

    data_path = str(tmp_path_factory.mktemp("data"))
    convert("Instruments", source_dir("Instruments"), data_path)
    return data_path


@pytest.fixture(scope="session")
def instruments_small_atomic(tmp_path_factory):
    """Atomic files of the shipped Instruments slice (600 users), converted once per test session."""
    from dataset_prep.atomic import convert

    data_path = str(tmp_path_factory.mktemp("data_small"))
    convert("Instruments", fixture_dir("Instruments"), data_path)
    return data_path


@pytest.fixture
def loopback():
    """A real HTTP server on 127.0.0.1 serving ``server.files`` ({path: bytes}); a path in ``fail_once``
    answers 500 the first time. ``server.url`` is its base URL, ``server.requests`` the paths asked for."""
    import http.server
    import threading
    import types

    state = types.SimpleNamespace(files={}, fail_once=set(), requests=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append(self.path)
            if self.path in state.fail_once:
                state.fail_once.discard(self.path)
                self.send_error(500)
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def quiet_config(**extra):
    """Config dict for fast, quiet test runs."""
    cfg = {"show_progress": False, "state": "WARNING", "checkpoint_dir": extra.pop("checkpoint_dir", "saved")}
    cfg.update(extra)
    return cfg


def subset_source(name, n_users, folder):
    """A source folder holding the first ``n_users`` users of a shipped slice (codes and text kept)."""
    import json
    import shutil

    src = fixture_dir(name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(src, f"{name}.inter.json")) as f:
        sequences = json.load(f)
    if n_users > len(sequences):
        raise ValueError(f"the {name} slice holds {len(sequences)} users, not {n_users}: "
                         f"rebuild it larger with tests/fixtures/make_small.py")
    subset = dict(list(sequences.items())[:n_users])
    with open(os.path.join(folder, f"{name}.inter.json"), "w") as f:
        json.dump(subset, f)
    for file in os.listdir(src):
        if file.startswith(f"{name}.index") or file == f"{name}.item.json":
            shutil.copy(os.path.join(src, file), folder)
    return folder


SMALL_T5 = {"d_model": 64, "d_ff": 256, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16}
