"""Raw Amazon 2018 reviews + metadata -> the processed files of ``../shared/data``.

Inputs (https://nijianmo.github.io/amazon/):
- interactions: ``<Category>_5.json.gz`` (json lines with ``reviewerID``, ``asin``,
  ``unixReviewTime``) or a ratings CSV ``<Category>.csv`` (``item,user,rating,timestamp``, no
  header); plain or gzipped;
- metadata: ``meta_<Category>.json.gz`` (json lines with ``asin``, ``title``, ``description``
  (list of str), ``brand``, ``category`` (list), ``imageURLHighRes`` / ``imageURL`` (lists)).

Preprocessing, as in the MQL4GRec paper: a user-item pair seen several times keeps its earliest
interaction; items without metadata (no meta line or an empty title) are dropped, and so are items
without an image when images are required; then the iterative k-core (default 5: every user and
every item has at least k interactions); each user's items in chronological order (ties keep file
order). Every drop is counted in the returned summary.

Outputs, in ``<out_dir>``: ``<Name>.inter.json`` ``{user id: [item ids, oldest first]}``,
``<Name>.item.json`` ``{item id: {title, description, brand, categories}}``, ``<Name>.item2id``
and ``<Name>.user2id`` (``<ASIN or reviewer id>\\t<integer id>``). Ids are 0-based integers given
in sorted order of the ASINs / reviewer ids, so the same raw files always give the same ids.
"""

import csv
import gzip
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

from tqdm import tqdm

from dataset_prep.io import PrepError, atomic_write, write_json
from dataset_prep.network import reachable

logger = logging.getLogger(__name__)


def _open_text(path):
    if not os.path.isfile(path):
        raise PrepError(f"Raw file not found: {path}. Download it from the Amazon 2018 review data page.")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_lines(path):
    """Yield (line number, object) for each non-empty line of a json-lines file."""
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepError(f"{path} line {number} is not JSON ({e.msg}); re-download the file.") from None


def read_interactions(path):
    """``[(user, asin, unix time), ...]`` in file order, from a 5-core review file or a ratings CSV."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".csv"):
        return _read_ratings_csv(path)
    rows = []
    for number, obj in _json_lines(path):
        try:
            rows.append((str(obj["reviewerID"]), str(obj["asin"]), int(obj["unixReviewTime"])))
        except (KeyError, TypeError, ValueError):
            raise PrepError(
                f"{path} line {number}: a review needs reviewerID, asin and an integer unixReviewTime."
            ) from None
    return rows


def _read_ratings_csv(path):
    rows = []
    with _open_text(path) as f:
        for number, record in enumerate(csv.reader(f), 1):
            if not record:
                continue
            if len(record) < 4:
                raise PrepError(f"{path} line {number}: expected item,user,rating,timestamp, got {record}.")
            item, user, _, stamp = record[:4]
            if number == 1 and not stamp.strip().isdigit():
                continue  # a header line
            try:
                rows.append((user, item, int(float(stamp))))
            except ValueError:
                raise PrepError(f"{path} line {number}: timestamp {stamp!r} is not a number.") from None
    return rows


def read_meta(path):
    """``{asin: meta dict}``; the first line of an asin wins (some meta files repeat asins)."""
    meta = {}
    for number, obj in _json_lines(path):
        asin = obj.get("asin")
        if asin is None:
            raise PrepError(f"{path} line {number}: a metadata line has no 'asin'.")
        meta.setdefault(str(asin), obj)
    return meta


def image_urls(meta_entry):
    """The product's image URLs, high resolution first."""
    urls = list(meta_entry.get("imageURLHighRes") or []) + list(meta_entry.get("imageURL") or [])
    return [u for u in urls if isinstance(u, str) and u.startswith("http")]


def keep_earliest(rows):
    """Drop repeated (user, item) pairs, keeping the earliest; returns (rows, number dropped)."""
    first = {}
    for index, (user, item, stamp) in enumerate(rows):
        key = (user, item)
        if key not in first or stamp < rows[first[key]][2]:
            first[key] = index
    kept = [rows[i] for i in sorted(first.values())]
    return kept, len(rows) - len(kept)


def keep_items(rows, allowed):
    """Rows whose item is in ``allowed``; returns (rows, items dropped, interactions dropped)."""
    kept = [r for r in rows if r[1] in allowed]
    dropped_items = {r[1] for r in rows} - set(allowed)
    return kept, len(dropped_items), len(rows) - len(kept)


def k_core(rows, k=5):
    """Iteratively drop users and items with fewer than ``k`` interactions until none is left.

    Returns (rows, stats) with stats = {rounds, users_dropped, items_dropped, interactions_dropped}.
    Dropping an item can push a user under ``k`` and the other way round, hence the loop.
    """
    users0, items0, n0 = len({r[0] for r in rows}), len({r[1] for r in rows}), len(rows)
    rounds = 0
    while True:
        user_count = Counter(r[0] for r in rows)
        item_count = Counter(r[1] for r in rows)
        kept = [r for r in rows if user_count[r[0]] >= k and item_count[r[1]] >= k]
        if len(kept) == len(rows):
            break
        rows, rounds = kept, rounds + 1
    stats = {"rounds": rounds, "users_dropped": users0 - len({r[0] for r in rows}),
             "items_dropped": items0 - len({r[1] for r in rows}), "interactions_dropped": n0 - len(rows)}
    return rows, stats


def chronological_sequences(rows):
    """``{user: [asin, ...]}`` oldest first; equal times keep file order (Python's sort is stable)."""
    by_user = defaultdict(list)
    for order, (user, item, stamp) in enumerate(rows):
        by_user[user].append((stamp, order, item))
    return {user: [item for _, _, item in sorted(events)] for user, events in by_user.items()}


def item_record(meta_entry):
    """The ``<Name>.item.json`` entry of one product; cleaning is left to the text stage."""
    description = meta_entry.get("description") or ""
    if isinstance(description, list):
        description = " ".join(str(d) for d in description)
    categories = meta_entry.get("category") or meta_entry.get("categories") or []
    if isinstance(categories, list):
        categories = ",".join(str(c) for c in categories)
    return {"title": str(meta_entry.get("title") or ""), "description": str(description),
            "brand": str(meta_entry.get("brand") or ""), "categories": str(categories)}


def has_metadata(meta_entry):
    return meta_entry is not None and bool(str(meta_entry.get("title") or "").strip())


def image_file(image_dir, asin):
    return os.path.join(image_dir, f"{asin}.jpg")


def download_images(asins, meta, image_dir, retries=3, timeout=10.0):
    """Fetch each product's first downloadable image into ``<image_dir>/<asin>.jpg``.

    An existing file is the cache, so a re-run only fetches what is missing. Returns the number of
    new downloads. Offline (the first image host unreachable) raises :class:`PrepError` at once;
    URLs that answer 403/404/410 leave the item without an image.
    """
    todo = []
    for asin in asins:
        urls = image_urls(meta.get(asin) or {})
        if urls and not os.path.isfile(image_file(image_dir, asin)):
            todo.append((asin, urls))
    if not todo:
        return 0
    if not reachable(todo[0][1][0], timeout):
        raise PrepError(
            f"Cannot reach {todo[0][1][0]} to download {len(todo)} product images (no network?). Put the "
            f"images in a folder as <asin>.jpg and pass --images DIR without --download_images."
        )
    os.makedirs(image_dir, exist_ok=True)
    fetched = 0
    for asin, urls in tqdm(todo, desc="download images", unit="img"):
        fetched += any(_fetch(url, image_file(image_dir, asin), retries, timeout) for url in urls)
    return fetched


def _fetch(url, dest, retries, timeout):
    """True when ``url`` was saved to ``dest``; transient errors are retried with back-off."""
    error = None
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
            with atomic_write(dest, "wb") as f:
                f.write(data)
            return True
        except urllib.error.HTTPError as e:
            if e.code in (403, 404, 410):
                return False
            error = e
        except (urllib.error.URLError, OSError) as e:
            error = e
        time.sleep(0.5 * 2 ** attempt)
    logger.warning(f"giving up on {url} after {retries} tries: {error}")
    return False


def preprocess(reviews_path, meta_path, k=5, image_dir=None, require_images=False,
               download=False, retries=3):
    """Raw files -> (sequences {reviewer: [asin, ...]}, meta {asin: dict}, summary of every drop)."""
    rows = read_interactions(reviews_path)
    meta = read_meta(meta_path)
    summary = {"interactions_read": len(rows), "users_read": len({r[0] for r in rows}),
               "items_read": len({r[1] for r in rows})}
    rows, summary["duplicate_pairs_dropped"] = keep_earliest(rows)

    described = {a for a in {r[1] for r in rows} if has_metadata(meta.get(a))}
    rows, summary["items_without_metadata"], summary["interactions_of_items_without_metadata"] = \
        keep_items(rows, described)

    if require_images:
        if image_dir is None:
            raise PrepError("--require_images needs --images DIR (a folder of <asin>.jpg) or --download_images.")
        if download:
            summary["images_downloaded"] = download_images(sorted(described), meta, image_dir, retries)
        pictured = {a for a in described if os.path.isfile(image_file(image_dir, a))}
        rows, summary["items_without_image"], summary["interactions_of_items_without_image"] = \
            keep_items(rows, pictured)

    rows, core = k_core(rows, k)
    summary.update({f"{k}core_{name}": value for name, value in core.items()})
    sequences = chronological_sequences(rows)
    summary.update({"users": len(sequences), "items": len({r[1] for r in rows}), "interactions": len(rows)})
    if not sequences:
        raise PrepError(f"Nothing left of {reviews_path} after the {k}-core filter; check the files or lower --k.")
    return sequences, meta, summary


def write_processed(out_dir, name, sequences, meta):
    """Write ``<Name>.inter.json``, ``.item.json``, ``.item2id`` and ``.user2id``; returns the item2id map."""
    item2id = {a: i for i, a in enumerate(sorted({a for seq in sequences.values() for a in seq}))}
    user2id = {u: i for i, u in enumerate(sorted(sequences))}
    write_json(os.path.join(out_dir, f"{name}.inter.json"),
               {str(user2id[u]): [item2id[a] for a in sequences[u]] for u in sorted(sequences)})
    write_json(os.path.join(out_dir, f"{name}.item.json"), {str(i): item_record(meta[a]) for a, i in item2id.items()})
    for suffix, mapping in (("item2id", item2id), ("user2id", user2id)):
        with atomic_write(os.path.join(out_dir, f"{name}.{suffix}")) as f:
            f.writelines(f"{key}\t{value}\n" for key, value in mapping.items())
    return item2id


def read_id_map(path):
    """``{raw id: integer id}`` from a ``.item2id`` / ``.user2id`` file."""
    mapping = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].isdigit():
                raise PrepError(f"{path} line {number}: expected '<raw id>\\t<integer id>'.")
            mapping[parts[0]] = int(parts[1])
    return mapping
