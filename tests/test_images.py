"""The image download stage against a real HTTP server on the loopback: good, truncated and missing
images, a server that fails once, resume, the report, and the URLs read from Amazon metadata."""

import gzip
import io
import json
import os

import pytest

from dataset_prep import images
from dataset_prep.io import PrepError


def jpeg(seed=0, size=(64, 48)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(image).ellipse((4 + seed, 4, 40 + seed, 40), fill=(30 * seed % 255, 120, 200))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_valid_image_refuses_truncated_and_non_images():
    good = jpeg()
    assert images.valid_image(good)
    assert not images.valid_image(good[: len(good) // 2])  # a truncated JPEG is not an image
    assert not images.valid_image(b"<html>Service Unavailable</html>")
    assert not images.valid_image(b"")


def test_download_counts_every_outcome_and_resumes(loopback, tmp_path):
    good, other = jpeg(1), jpeg(2)
    loopback.files.update({"/good.jpg": good, "/flaky.jpg": other, "/truncated.jpg": good[: len(good) // 2],
                           "/second.jpg": jpeg(3)})
    loopback.fail_once.add("/flaky.jpg")
    base = loopback.url
    urls = {
        "A_good": [f"{base}/good.jpg"],
        "B_flaky": [f"{base}/flaky.jpg"],                          # 500, then the image: retried
        "C_truncated": [f"{base}/truncated.jpg"],                  # never a whole image: failed
        "D_missing": [f"{base}/missing.jpg"],                      # 404: failed, not retried
        "E_fallback": [f"{base}/missing.jpg", f"{base}/second.jpg"],  # high-res 404, then the next URL
        "F_no_url": [],
    }
    folder = tmp_path / "images"
    report = images.download_images(urls, str(folder), workers=4, retries=2, backoff=0.01, progress=False)
    assert (report["requested"], report["present"], report["downloaded"], report["failed"], report["no_url"]) == \
        (6, 0, 3, 2, 1)
    assert (folder / "A_good.jpg").read_bytes() == good and (folder / "B_flaky.jpg").read_bytes() == other
    assert images.valid_image(str(folder / "E_fallback.jpg"))
    assert not (folder / "C_truncated.jpg").exists() and not (folder / "D_missing.jpg").exists()
    failures = {f["key"]: f["errors"] for f in report["failures"]}
    assert set(failures) == {"C_truncated", "D_missing"}
    assert "not a whole image" in failures["C_truncated"][0] and "HTTP 404" in failures["D_missing"][0]
    assert loopback.requests.count("/truncated.jpg") == 3 and loopback.requests.count("/missing.jpg") == 2
    assert json.loads((folder / images.REPORT_NAME).read_text()) == report  # the report file lists them all

    # resume: valid files are kept; a broken file on disk is fetched again; nothing else is asked for
    (folder / "A_good.jpg").write_bytes(good[:100])
    loopback.requests.clear()
    again = images.download_images({k: urls[k] for k in ("A_good", "B_flaky", "E_fallback")}, str(folder),
                                    retries=0, progress=False)
    assert (again["present"], again["downloaded"], again["failed"]) == (2, 1, 0)
    assert loopback.requests == ["/good.jpg"] and (folder / "A_good.jpg").read_bytes() == good


def test_offline_is_one_clear_error(tmp_path):
    with pytest.raises(PrepError, match="Cannot reach http://127.0.0.1:9/x.jpg .*--images DIR"):
        images.download_images({"A": ["http://127.0.0.1:9/x.jpg"]}, str(tmp_path), timeout=1, progress=False)


def test_urls_from_amazon_metadata_high_resolution_first(tmp_path):
    meta = tmp_path / "meta_Toy.json.gz"
    lines = [{"asin": "B1", "title": "a", "imageURL": ["http://h/small.jpg"], "imageURLHighRes": ["http://h/big.jpg"]},
             {"asin": "B2", "title": "b"},
             {"asin": "B3", "title": "c", "imageURLHighRes": ["http://h/3.jpg"]}]
    with gzip.open(meta, "wt") as f:
        f.write("\n".join(json.dumps(line) for line in lines))
    assert images.urls_from_meta(str(meta), {"B1", "B2"}) == {"B1": ["http://h/big.jpg", "http://h/small.jpg"], "B2": []}


def test_stage_downloads_by_asin_and_counts_missing(loopback, tmp_path):
    from dataset_prep import stages

    folder = tmp_path / "prep" / "Toy"
    folder.mkdir(parents=True)
    (folder / "Toy.item.json").write_text(json.dumps({"0": {"title": "a"}, "1": {"title": "b"}, "2": {"title": "c"}}))
    (folder / "Toy.item2id").write_text("B0\t0\nB1\t1\nB2\t2\n")
    loopback.files.update({"/0.jpg": jpeg(0), "/1.jpg": jpeg(1)})
    meta = tmp_path / "meta.json"
    meta.write_text("\n".join(json.dumps({"asin": f"B{i}", "title": "t", "imageURLHighRes": [f"{loopback.url}/{i}.jpg"]})
                              for i in range(3)))
    ws = stages.Workspace(str(tmp_path / "prep"))
    report = stages.stage_download_images(ws, "Toy", str(meta), retries=0, progress=False)
    assert report["downloaded"] == 2 and report["failed"] == 1 and report["missing"] == 1
    assert sorted(os.listdir(folder / "images")) == ["B0.jpg", "B1.jpg", images.REPORT_NAME]
