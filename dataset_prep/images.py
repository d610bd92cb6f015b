"""Product images from the image URLs of Amazon 2018 metadata -> ``<folder>/<asin>.jpg``.

The MQL4GRec authors take each product's ``imageURLHighRes`` (then ``imageURL``) from
``meta_<Category>.json.gz``. :func:`download_images` fetches them with a thread pool; each URL is
retried with exponential back-off on transient failures (connection errors, time-outs, HTTP 5xx
and 429), never on 403/404/410, and the next URL of the product is tried after a failure. Every
file is validated before it is kept: PIL must identify it (``verify``) and decode it whole
(``load``), so a truncated JPEG or an HTML error page is never an image. Files are written
atomically, and a re-run skips every valid file already there (resumable); an invalid one is
fetched again. Every failure is counted and listed in the report (``<folder>/download_report.json``
by default), which also says how many products have no URL at all.
"""

import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from dataset_prep.io import PrepError, atomic_write, write_json
from dataset_prep.network import reachable

logger = logging.getLogger(__name__)

REPORT_NAME = "download_report.json"
USER_AGENT = "recbole_mql-image-fetch/1.0"
_PERMANENT = (401, 403, 404, 410)


def image_path(folder, key):
    return os.path.join(folder, f"{key}.jpg")


def valid_image(data_or_path):
    """True when PIL identifies the bytes (or file) as an image and decodes all of it."""
    from PIL import Image

    def source():
        return io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path

    try:
        with Image.open(source()) as image:
            image.verify()
        with Image.open(source()) as image:  # verify() leaves the image unusable: open again to decode
            image.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for broken files (OSError, SyntaxError, ...)
        return False


def urls_from_meta(meta_path, asins=None):
    """``{asin: [url, ...]}`` (``imageURLHighRes`` first, then ``imageURL``) from an Amazon metadata file
    (json lines, plain or gzipped), for ``asins`` only when given."""
    from dataset_prep.raw_amazon import _json_lines, image_urls

    wanted = set(asins) if asins is not None else None
    found = {}
    for number, entry in _json_lines(meta_path):  # streamed: a category's metadata is hundreds of MB
        asin = entry.get("asin") if isinstance(entry, dict) else None
        if asin is None:
            raise PrepError(f"{meta_path} line {number}: a metadata line has no 'asin'.")
        asin = str(asin)
        if (wanted is None or asin in wanted) and asin not in found:  # the first line of an asin wins
            found[asin] = image_urls(entry)
    return found


def urls_from_items(item_json_path, item2id=None):
    """``{asin or item id: [url, ...]}`` from an item file whose entries carry ``imageURLHighRes`` /
    ``imageURL`` (or ``image_url``); keyed by ASIN where ``item2id`` maps them."""
    from dataset_prep.io import read_json
    from dataset_prep.raw_amazon import image_urls

    asin_of = {str(i): a for a, i in (item2id or {}).items()}
    found = {}
    for item, entry in read_json(item_json_path, "Item file").items():
        if not isinstance(entry, dict):
            continue
        extra = entry.get("image_url")
        urls = image_urls(entry) + ([extra] if isinstance(extra, str) and extra.startswith("http") else [])
        if urls:
            found[asin_of.get(str(item), str(item))] = urls
    return found


def _fetch_one(url, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
        expected = response.headers.get("Content-Length")
    if expected is not None and len(data) < int(expected):
        raise ConnectionError(f"connection closed after {len(data)} of {expected} bytes")
    return data


def fetch_image(urls, dest, retries=3, backoff=0.5, timeout=10.0):
    """Save the first of ``urls`` that gives a valid image to ``dest``; returns (url or None, errors).

    ``errors`` lists ``"<url>: <reason>"`` for every URL given up on.
    """
    errors = []
    for url in urls:
        reason = None
        for attempt in range(retries + 1):
            try:
                data = _fetch_one(url, timeout)
            except urllib.error.HTTPError as e:
                reason = f"HTTP {e.code}"
                if e.code in _PERMANENT:
                    break
            except (urllib.error.URLError, OSError, ConnectionError, TimeoutError, ValueError) as e:
                reason = str(getattr(e, "reason", e)) or type(e).__name__
            else:
                if valid_image(data):
                    with atomic_write(dest, "wb") as f:
                        f.write(data)
                    return url, errors
                reason = f"not a whole image ({len(data)} bytes)"  # truncated in transit: try again
            if attempt < retries:
                time.sleep(backoff * 2 ** attempt)
        errors.append(f"{url}: {reason}")
    return None, errors


def download_images(urls, folder, workers=8, retries=3, backoff=0.5, timeout=10.0, report_path=None,
                    progress=True, check_network=True):
    """Fetch ``urls`` (``{key: [url, ...]}``) into ``<folder>/<key>.jpg``; returns the report dict.

    The report counts ``requested`` (keys), ``present`` (valid files already there), ``downloaded``,
    ``failed`` and ``no_url`` (keys without any URL), lists ``failures`` ``[{key, errors}]``, and is
    written to ``report_path`` (default ``<folder>/download_report.json``).
    Offline (the first URL's host unreachable) raises :class:`PrepError` at once.
    """
    from tqdm import tqdm

    os.makedirs(folder, exist_ok=True)
    report_path = report_path or os.path.join(folder, REPORT_NAME)
    report = {"requested": len(urls), "present": 0, "downloaded": 0, "failed": 0, "no_url": 0, "failures": [],
              "folder": os.path.abspath(folder)}
    todo = []
    for key in sorted(urls):
        dest = image_path(folder, key)
        if os.path.isfile(dest) and valid_image(dest):
            report["present"] += 1
        elif not urls[key]:
            report["no_url"] += 1
        else:
            todo.append((key, list(urls[key]), dest))
    if todo and check_network and not reachable(todo[0][1][0], timeout=min(timeout, 5.0)):
        raise PrepError(f"Cannot reach {todo[0][1][0]} to download {len(todo)} product images (no network?). "
                        f"Put the images in a folder as <asin>.jpg and pass it with --images DIR.")
    lock = threading.Lock()

    def work(job):
        key, key_urls, dest = job
        got, errors = fetch_image(key_urls, dest, retries, backoff, timeout)
        with lock:
            if got:
                report["downloaded"] += 1
            else:
                report["failed"] += 1
                report["failures"].append({"key": key, "errors": errors})

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in tqdm(pool.map(work, todo), total=len(todo), desc="download images", unit="img",
                          disable=not progress):
                pass
    report["failures"].sort(key=lambda f: f["key"])
    write_json(report_path, report)
    if report["failed"] or report["no_url"]:
        logger.warning(f"images: {report['failed']} of {len(todo)} downloads failed, {report['no_url']} products "
                       f"have no image URL; the list is in {report_path}")
    logger.info("images: " + json.dumps({k: v for k, v in report.items() if k != "failures"}))
    return report
