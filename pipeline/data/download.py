"""Fetch files from an ordered list of mirrors, with retries, checksums, no partial files.

A mirror is an http(s) base URL or a local directory (offline users, tests). For each file, each mirror is
tried `retries` times (transient failures only) before the next; a file lands only after its MD5 matches: the
.gz's own, or, where the registry knows it, the MD5 of what it holds (a file packed again, or a local directory
holding the files unpacked, which is gzipped on the way in).
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from pipeline.data import offline
from pipeline.data.datasets import DATASETS, FILES, OFFLINE
from pipeline.data.idx import validate_idx
from pipeline.errors import DataError
from pipeline.files import atomic_path

log = logging.getLogger(__name__)
CHUNK = 1 << 16
USER_AGENT = "mnist-bench/1.0 (+https://dvc.org)"


def md5sum(path: Path, unpack: bool = False) -> str:
    """MD5 of the file's bytes, or with `unpack` of its gzip content (a file that is not gzip: '')."""
    h = hashlib.md5()
    try:
        with (gzip.open(path, "rb") if unpack else open(path, "rb")) as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    except (gzip.BadGzipFile, EOFError):
        return ""
    return h.hexdigest()


def _intact(path: Path, md5: str, raw_md5: str | None) -> str | None:
    """None when the file is the one the checksums name, else why not."""
    got = md5sum(path)
    if got == md5 or (raw_md5 is not None and md5sum(path, unpack=True) == raw_md5):
        return None
    return f"checksum mismatch (md5 {got}, expected {md5}" + (f", or {raw_md5} unpacked)" if raw_md5 else ")")


def _is_url(mirror: str) -> bool:
    return mirror.lower().startswith(("http://", "https://"))


def _local_dir(mirror: str) -> Path:
    return Path(mirror[len("file://"):] if mirror.lower().startswith("file://") else mirror).expanduser()


class _Permanent(Exception):
    """A failure that retrying the same mirror cannot fix (404, missing local file)."""


def _copy_url(url: str, out: Path, timeout: float, label: str) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        err = f"HTTP {e.code} {e.reason}"
        raise (_Permanent(err) if 400 <= e.code < 500 and e.code not in (408, 429) else OSError(err)) from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise OSError("connection refused") from None
        if isinstance(reason, socket.gaierror):
            raise OSError(f"host not found ({reason.strerror}; no network?)") from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise OSError(f"no answer within {timeout:g} s") from None
        raise OSError(str(reason)) from None
    with resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        got = 0
        with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False,
                                        disable=None) as bar:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (socket.timeout, TimeoutError):
                    raise OSError(f"stalled: no data for {timeout:g} s after {got} bytes") from None
                except http.client.IncompleteRead as e:
                    raise OSError(f"truncated: connection closed after {got + len(e.partial)} of {total} bytes") \
                        from None
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
        if total is not None and got != total:
            raise OSError(f"truncated: got {got} of {total} bytes")


def _copy_local(src_dir: Path, name: str, out: Path, unpacked_ok: bool) -> None:
    src = src_dir / name
    if src.is_file():
        shutil.copyfile(src, out)
        return
    plain = src_dir / name.removesuffix(".gz")
    if not (unpacked_ok and plain.is_file()):
        raise _Permanent(f"no such file {src}")
    # No name, mtime 0: the same content always packs to the same bytes, so DVC's hash of data/ stays put.
    with open(plain, "rb") as f, open(out, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
        shutil.copyfileobj(f, gz, CHUNK)


def fetch_file(name: str, md5: str | None, mirrors: list[str], dest: Path, timeout: float, retries: int,
               validate: Callable[[Path], None] | None = None, backoff_s: float = 0.5,
               raw_md5: str | None = None) -> str:
    """Fetch `name` into `dest` from the first mirror that serves it intact; return the mirror used.

    `md5` None means no known checksum: `validate(path)` (e.g. an IDX header check) must pass instead.
    `raw_md5`, the MD5 of the unpacked content, also accepts a file packed again and lets a local mirror hold
    the file unpacked (`name` without .gz). Raises DataError listing every mirror and why it failed.
    """
    target = dest / name
    if target.is_file() and md5 is not None and _intact(target, md5, raw_md5) is None:
        return "cache"
    failures = []
    for i, mirror in enumerate(mirrors, 1):
        reason = ""
        for attempt in range(retries):
            try:
                with atomic_path(target) as tmp:
                    if _is_url(mirror):
                        _copy_url(mirror.rstrip("/") + "/" + name, tmp, timeout, name)
                    else:
                        _copy_local(_local_dir(mirror), name, tmp, unpacked_ok=raw_md5 is not None)
                    if md5 is not None and (bad := _intact(tmp, md5, raw_md5)):
                        raise OSError(bad)
                    if validate is not None:
                        try:
                            validate(tmp)
                        except DataError as e:
                            raise _Permanent(f"invalid file: {str(e).split(': ', 1)[-1]}") from None
                return mirror
            except _Permanent as e:
                reason = str(e)
                break
            except OSError as e:
                reason = str(e) or type(e).__name__
                log.warning("%s from mirror %d (%s), attempt %d/%d: %s", name, i, mirror, attempt + 1, retries,
                            reason)
                if attempt + 1 < retries:
                    time.sleep(backoff_s * 2 ** attempt)
        failures.append(f"[{i}] {mirror}: {reason}")
    raise DataError(
        f"{name}: all {len(mirrors)} mirrors failed: " + "; ".join(failures)
        + ". Offline? Put the files in a directory and set data.mirrors: [/that/dir] in params.yaml,"
        " or use the offline real digits: dvc exp run -S data.name=mnist5k")


def fetch_all(files: dict[str, str | None], mirrors: list[str], dest: Path, timeout: float, retries: int,
              validate: Callable[[Path], None] | None = None, backoff_s: float = 0.5,
              raw: dict[str, str] | None = None) -> dict[str, str]:
    """Fetch every file ({name: md5}, `raw` {name: unpacked md5}); return {file: mirror used}.

    On failure, remove what this call fetched.
    """
    if not mirrors:
        raise DataError("download: no mirrors to try; set data.mirrors in params.yaml")
    dest.mkdir(parents=True, exist_ok=True)
    used: dict[str, str] = {}
    try:
        for name, md5 in files.items():
            used[name] = fetch_file(name, md5, mirrors, dest, timeout, retries, validate, backoff_s,
                                    raw_md5=(raw or {}).get(name))
    except BaseException:
        # An incomplete set is not an output: DVC would cache it as if the stage had succeeded.
        for name, mirror in used.items():
            if mirror != "cache":
                (dest / name).unlink(missing_ok=True)
        raise
    return used


def checksums(dest: Path, names: list[str]) -> dict[str, str]:
    return {n: md5sum(dest / n) for n in names if os.path.exists(dest / n)}


def download(name: str, mirrors: list[str], out: Path, timeout_s: float, retries: int) -> dict:
    """Fill `out` with the dataset's four IDX files; return a manifest (mirror used and MD5 per file)."""
    ds = DATASETS[name]
    if name in OFFLINE:
        offline.write(name, out)
        used = {f: f"offline ({name}, from an installed package)" for f in FILES}
    else:
        if ds.md5 is None:
            log.warning("data.name=idx has no known checksums: files are checked by IDX header and length only")
        md5 = dict(zip(FILES, ds.md5 or (None,) * len(FILES)))
        used = fetch_all(md5, mirrors or list(ds.mirrors), out, timeout_s, retries,
                         validate=validate_idx if ds.md5 is None else None,
                         raw=dict(zip(FILES, ds.raw_md5)) if ds.raw_md5 else None)
    return {"dataset": name, "files": {f: {"mirror": used[f], "md5": m} for f, m in checksums(out, FILES).items()}}
