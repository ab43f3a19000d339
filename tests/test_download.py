import gzip
import hashlib
import time

import pytest

from pipeline.data.download import fetch_all, fetch_file
from pipeline.data.idx import validate_idx, write_idx
from pipeline.errors import DataError

GOOD = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04" + bytes([1, 2, 3, 4]))
MD5 = hashlib.md5(GOOD).hexdigest()
NAME = "train-labels-idx1-ubyte.gz"


def serve(body: bytes, length: int | None = None, pause: float = 0):
    def handler(h):
        h.send_response(200)
        h.send_header("Content-Length", str(length if length is not None else len(body)))
        h.end_headers()
        if pause:
            h.wfile.write(body[:4])
            h.wfile.flush()
            time.sleep(pause)
        h.wfile.write(body)
    return handler


def leftovers(d):
    return sorted(p.name for p in d.iterdir())


def test_falls_back_through_refused_404_corrupt_to_good_mirror(tmp_path, http_server, refused_url):
    h, url = http_server.handler, http_server.url
    h.routes["/corrupt/"] = serve(GOOD[:-3] + b"xyz")
    h.routes["/good/"] = serve(GOOD)
    mirrors = [refused_url, f"{url}/missing/", f"{url}/corrupt/", f"{url}/good/"]
    used = fetch_file(NAME, MD5, mirrors, tmp_path, timeout=2, retries=2, backoff_s=0)
    assert used == f"{url}/good/"
    assert (tmp_path / NAME).read_bytes() == GOOD
    assert leftovers(tmp_path) == [NAME]  # no temp or partial file left
    # 404 is permanent (one try); a corrupt file is retried before moving on; then the good mirror once.
    assert h.hits == [f"/missing/{NAME}", f"/corrupt/{NAME}", f"/corrupt/{NAME}", f"/good/{NAME}"]


def test_all_mirrors_failing_is_one_line_listing_each_reason(tmp_path, http_server, refused_url):
    h, url = http_server.handler, http_server.url
    h.routes["/corrupt/"] = serve(GOOD[:-3] + b"xyz")
    h.routes["/short/"] = serve(GOOD, length=len(GOOD) + 10)
    h.routes["/stall/"] = serve(GOOD, pause=3)
    mirrors = [refused_url, f"{url}/missing/", f"{url}/corrupt/", f"{url}/short/", f"{url}/stall/"]
    with pytest.raises(DataError) as e:
        fetch_file(NAME, MD5, mirrors, tmp_path, timeout=1, retries=1, backoff_s=0)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{NAME}: all 5 mirrors failed: [1] {refused_url}: connection refused; ")
    assert f"[2] {url}/missing/: HTTP 404" in msg
    assert f"[3] {url}/corrupt/: checksum mismatch (md5 " in msg and f"expected {MD5})" in msg
    assert f"[4] {url}/short/: truncated" in msg
    assert f"[5] {url}/stall/: stalled: no data for 1 s" in msg
    assert "data.mirrors: [/that/dir]" in msg and "data.name=mnist5k" in msg
    assert leftovers(tmp_path) == []


def test_local_directory_mirror_and_file_scheme(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / NAME).write_bytes(GOOD)
    for mirror in (str(src), f"file://{src}"):
        dest = tmp_path / f"dest{len(mirror)}"
        assert fetch_file(NAME, MD5, [str(tmp_path / "empty"), mirror], dest, 1, 1) == mirror
        assert (dest / NAME).read_bytes() == GOOD


def test_cached_file_with_right_checksum_is_not_fetched_again(tmp_path, http_server):
    (tmp_path / NAME).write_bytes(GOOD)
    assert fetch_file(NAME, MD5, [http_server.url + "/"], tmp_path, 1, 1) == "cache"
    assert http_server.handler.hits == []


def test_no_checksum_means_header_validation(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09" + bytes(2)))
    write_idx(src / "good.gz", __import__("numpy").arange(4, dtype="uint8"))
    with pytest.raises(DataError, match=r"bad.gz: all 1 mirrors failed: \[1\] .*invalid file: header says 9"):
        fetch_file("bad.gz", None, [str(src)], tmp_path / "d", 1, 1, validate=validate_idx)
    assert fetch_file("good.gz", None, [str(src)], tmp_path / "d", 1, 1, validate=validate_idx) == str(src)


def test_fetch_all_removes_what_it_fetched_when_a_later_file_fails(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.gz").write_bytes(GOOD)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="b.gz: all 1 mirrors failed"):
        fetch_all({"a.gz": MD5, "b.gz": MD5}, [str(src)], dest, 1, 1)
    assert leftovers(dest) == []
