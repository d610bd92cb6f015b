"""The paper's datasets by name: the authors' processed files, downloaded at a pinned commit.

``Instruments`` comes from the MQL4GRec authors' repository (with their text and image codes and
their leave-one-out split), ``Arts`` and ``Games`` from MACRec's (the paper's preprocessing,
without codes). Every file is pinned by its size and content hash at that commit: a sha256, or
the git blob id where only the repository's tree was at hand (the same content guarantee).

A file is downloaded into ``<cache>/<Dataset>/<file>.part`` (resumed with an HTTP range request
after an interruption, restarted when the server ignores the range), checked against its pin,
and only then renamed into place: a file that does not match is deleted, never converted.
``RECBOLE_MQL_DATA_URL`` (or ``data_url``) replaces the base URL with a mirror laid out as
``<mirror>/<Dataset>/<file>``.
"""

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from dataset_prep.io import PrepError
from dataset_prep.network import reachable

logger = logging.getLogger(__name__)

MIRROR_ENV = "RECBOLE_MQL_DATA_URL"
CACHE_ENV = "RECBOLE_MQL_CACHE"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Pin:
    """What a downloaded file must be: its size, and its sha256 or git blob id."""

    size: int
    sha256: str = None
    git_blob: str = None


@dataclass(frozen=True)
class KnownDataset:
    repo: str
    commit: str
    folder: str
    files: dict = field(default_factory=dict)
    has_codes: bool = True

    @property
    def base_url(self):
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.folder}/"


_AUTHORS = ("zhaijianyang/MQL4GRec", "5ad9c27ff904f56f056714534c25c12af4958baf")
_MACREC = ("zhangfw123/MACRec", "7a48e7429a8806e2290a1fc6ac5661c1ff934b51")

KNOWN_DATASETS = {
    "Instruments": KnownDataset(*_AUTHORS, "data/Instruments", {
        "Instruments.inter.json": Pin(2181487, "757c6695bbc742b3acc285f96609f6ad579af30a5ea45f726d951efe7d04fdfe"),
        "Instruments.index_lemb.json": Pin(589708, "3235c715a8f3b5bcf1cdf7fb053542e6496ea2453ea08f20fc572bdf0fbdc5ad"),
        "Instruments.index_vitemb.json": Pin(589588, "ab096085ec62b2e2058caa09e8491aa7a1ed11ab70487028fe6c35cf2e8b1941"),
        "Instruments.item2id": Pin(98890, "58198ffb31ca372c7208dc7c49639ff6b4b83756c24e2458cc5038a68ee4f222"),
        "Instruments.user2id": Pin(343706, "aa7e84edcec59ee57f952e75b6c556a03dd8f47ade59113d71ca8c999f537350"),
        "Instruments.train.inter": Pin(2904596, "d0b11ac928bebc6ccdab9092a398f9d53129df90a7ab43a9ca107950d48a6681"),
        "Instruments.valid.inter": Pin(619460, "a99e70f9986b9f80b9f5c9e89c357791bb48e55d055b3e01a89c454fa5c7704f"),
        "Instruments.test.inter": Pin(696473, "c3d558e4f117209b5b6da083dd8d8c327ef2ee163a947ac1818517f211e2a56d"),
    }),
    "Arts": KnownDataset(*_MACREC, "data/Arts", {
        "Arts.inter.json": Pin(2831431, "b7a22a19b424cc71f21425557b710c01da03327cd1b946937a66d718526727ef"),
        "Arts.item2id": Pin(149546, "3ff8dcf7e57929f6c513636308aaca8e4f17bf178e8656dab74e326ba273f54e"),
        "Arts.item.json": Pin(None, git_blob="48da50ee26ea911a214f0bcbb5b4bdd4fe6cd2df"),
    }, has_codes=False),
    "Games": KnownDataset(*_MACREC, "data/Games", {
        "Games.inter.json": Pin(None, git_blob="1077dc899f6661d2b4d9a01bffa1c2dbe74d681b"),
        "Games.item2id": Pin(224153, "01f1f6c631c58cdc494d1df318638a0aa8abb855c33485ecb2cf7aa11a94ef83"),
        "Games.item.json": Pin(None, git_blob="9ccf9ddff1c7a3b5b635dbf5ac8f4f15ba988b89"),
    }, has_codes=False),
}


class DownloadError(PrepError):
    """A file that could not be had, or that does not match its pin; the message says what to do."""


def default_cache():
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "recbole_mql", "sources")


def dataset_urls(name, base_url=None):
    """{file name: URL} of a known dataset, from the mirror when one is given (argument or env)."""
    known = KNOWN_DATASETS[name]
    mirror = base_url or os.environ.get(MIRROR_ENV)
    base = f"{mirror.rstrip('/')}/{name}/" if mirror else known.base_url
    return {filename: base + filename for filename in known.files}


def offline_message(url, error):
    """The one line said when ``url`` cannot be had: the URL, the mirror variable and --source."""
    return (f"Cannot download {url} ({error}). Without internet, give a mirror with ${MIRROR_ENV}=<base URL> "
            f"(files at <base>/<Dataset>/<file>) or a local copy with --source=<folder> / $RECBOLE_MQL_SOURCE.")


def file_matches(path, pin):
    """Whether the file at ``path`` has the pinned size and hash."""
    size = os.path.getsize(path)
    if pin.size is not None and size != pin.size:
        return False
    if pin.sha256:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == (pin.sha256 or pin.git_blob)


def fetch(url, path, pin, timeout=30.0, retries=4, backoff=1.0):
    """Download ``url`` to ``path`` (via ``path.part``, resumed after an interruption), checked
    against ``pin``; a file already in place and matching is kept as it is."""
    if os.path.isfile(path) and file_matches(path, pin):
        return path
    part = path + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
            break
        except urllib.error.HTTPError as e:
            if e.code in (404, 403, 410):
                raise DownloadError(f"{url}: HTTP {e.code}; the file is not there. Check the mirror "
                                    f"(${MIRROR_ENV}) or pass a local folder with --source.") from None
            error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
            error = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt == retries:
            raise DownloadError(offline_message(url, error))
        logger.warning(f"download of {url} interrupted ({error}); retry {attempt + 1}/{retries}")
        time.sleep(backoff * 2 ** attempt)
    if not file_matches(part, pin):
        os.remove(part)
        raise DownloadError(f"{url}: the downloaded file does not match its pinned checksum "
                            f"({pin.sha256 or 'git blob ' + pin.git_blob}); it was deleted and nothing was converted. "
                            f"The mirror serves another file: fix the mirror or pass --source.")
    os.replace(part, path)
    return path


def _transfer(url, part, timeout):
    """Append the rest of ``url`` to ``part`` (HTTP range); restart it when the server sends it all."""
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is complete (or wrong; checked next)
            return
        raise
    with response:
        resumed = have and response.status == 206
        expected = response.headers.get("Content-Length")
        written = 0
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                written += len(chunk)
    if expected is not None and written < int(expected):
        raise ConnectionError(f"connection closed after {written} of {expected} bytes")


def download_dataset(name, cache_dir=None, base_url=None, timeout=30.0, retries=4):
    """The folder holding the known dataset ``name``'s source files, downloaded on first use."""
    if name not in KNOWN_DATASETS:
        raise DownloadError(f"No source for dataset '{name}': it is not one of the known datasets "
                            f"({', '.join(KNOWN_DATASETS)}). Pass --source=<folder with {name}.inter.json and "
                            f"its code files>, or set $RECBOLE_MQL_SOURCE to the folder that holds {name}/.")
    folder = os.path.join(cache_dir or default_cache(), name)
    known = KNOWN_DATASETS[name]
    todo = [(filename, url) for filename, url in dataset_urls(name, base_url).items()
            if not (os.path.isfile(os.path.join(folder, filename))
                    and file_matches(os.path.join(folder, filename), known.files[filename]))]
    if todo and not reachable(todo[0][1], timeout=min(timeout, 5.0)):
        raise DownloadError(offline_message(todo[0][1], "host unreachable"))  # at once, not after the retries
    start, size = time.perf_counter(), 0
    for filename, url in todo:
        logger.info(f"downloading {url}")
        size += os.path.getsize(fetch(url, os.path.join(folder, filename), known.files[filename], timeout=timeout,
                                      retries=retries))
    if todo:
        logger.info(f"{name}: {len(todo)} files, {size / 1e6:.1f} MB in {time.perf_counter() - start:.2f}s -> {folder}")
    return folder
