"""Datasets by name (issue 13): downloads against a real HTTP server on the loopback."""

import hashlib
import http.server
import os
import threading
import time

import pytest

from dataset_prep import download
from dataset_prep.download import DownloadError, Pin, fetch


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}       # path -> bytes
    cut_once = set()  # paths whose first response stops half-way
    slow = set()
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        if self.path in self.slow:
            time.sleep(1.5)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.cut_once:
            self.cut_once.discard(self.path)
            self.wfile.write(body[start:start + len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_once, _Handler.slow, _Handler.requests = {}, set(), set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.handle_error = lambda request, address: None  # a client that hung up early is part of the tests
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _pin(body):
    return Pin(len(body), hashlib.sha256(body).hexdigest())


def test_good_file_is_checked_and_kept(server, tmp_path):
    body = os.urandom(300_000)
    _Handler.files["/a.bin"] = body
    path = fetch(f"{server}/a.bin", str(tmp_path / "a.bin"), _pin(body), retries=0)
    assert open(path, "rb").read() == body
    fetch(f"{server}/a.bin", path, _pin(body), retries=0)  # already there: no second request
    assert len(_Handler.requests) == 1


def test_git_blob_pin(server, tmp_path):
    body = b'{"1": [1, 2]}'
    _Handler.files["/b.json"] = body
    blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()
    fetch(f"{server}/b.json", str(tmp_path / "b.json"), Pin(None, git_blob=blob), retries=0)
    assert (tmp_path / "b.json").read_bytes() == body


def test_wrong_checksum_is_deleted_never_kept(server, tmp_path):
    _Handler.files["/c.bin"] = b"tampered"
    with pytest.raises(DownloadError, match="does not match its pinned checksum"):
        fetch(f"{server}/c.bin", str(tmp_path / "c.bin"), _pin(b"original"), retries=0)
    assert os.listdir(tmp_path) == []


def test_connection_cut_mid_file_resumes_with_a_range(server, tmp_path):
    body = os.urandom(500_000)
    _Handler.files["/d.bin"] = body
    _Handler.cut_once.add("/d.bin")
    fetch(f"{server}/d.bin", str(tmp_path / "d.bin"), _pin(body), retries=2, backoff=0.01)
    assert (tmp_path / "d.bin").read_bytes() == body
    assert _Handler.requests[0][1] is None and _Handler.requests[1][1].startswith("bytes=")
    assert int(_Handler.requests[1][1].split("=")[1].rstrip("-")) > 0


def test_missing_file_names_the_url_and_the_fixes(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch(f"{server}/nope.json", str(tmp_path / "nope.json"), _pin(b"x"), retries=3, backoff=0.01)
    message = str(err.value)
    assert f"{server}/nope.json" in message and "404" in message and "--source" in message
    assert len(_Handler.requests) == 1  # a 404 is not retried


def test_slow_server_times_out_with_one_line(server, tmp_path):
    _Handler.files["/e.bin"] = b"late"
    _Handler.slow.add("/e.bin")
    with pytest.raises(DownloadError) as err:
        fetch(f"{server}/e.bin", str(tmp_path / "e.bin"), _pin(b"late"), timeout=0.3, retries=1, backoff=0.01)
    assert download.MIRROR_ENV in str(err.value) and "\n" not in str(err.value)


def test_offline_names_url_mirror_and_source(tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch("http://127.0.0.1:9/x.json", str(tmp_path / "x.json"), _pin(b"x"), timeout=1, retries=0)
    assert "http://127.0.0.1:9/x.json" in str(err.value)
    assert download.MIRROR_ENV in str(err.value) and "--source" in str(err.value)


def test_unknown_dataset_says_what_to_pass(tmp_path):
    with pytest.raises(DownloadError, match="--source"):
        download.download_dataset("NoSuchData", cache_dir=str(tmp_path))


@pytest.mark.full_data
def test_instruments_from_a_mirror_is_byte_identical(server, tmp_path, shared_data):
    """The pins are the authors' files: the shared copies pass them (served by a loopback mirror)."""
    folder = os.path.join(shared_data, "Instruments")
    for name in download.KNOWN_DATASETS["Instruments"].files:
        with open(os.path.join(folder, name), "rb") as f:
            _Handler.files[f"/mirror/Instruments/{name}"] = f.read()
    got = download.download_dataset("Instruments", cache_dir=str(tmp_path), base_url=f"{server}/mirror", retries=0)
    assert sorted(os.listdir(got)) == sorted(download.KNOWN_DATASETS["Instruments"].files)
    for name in os.listdir(got):
        assert open(os.path.join(got, name), "rb").read() == _Handler.files[f"/mirror/Instruments/{name}"]
