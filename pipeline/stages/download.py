"""Stage `download`: the four IDX files of data.name into --out (checksummed; digits is written offline)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import files, params
from pipeline.data import DATASETS, FILES, validate_idx, write_digits
from pipeline.download import checksums, fetch_all

log = logging.getLogger("download")


def download(name: str, mirrors: list[str], out: Path, timeout_s: float, retries: int) -> dict:
    """Fill `out` with the dataset's four IDX files; return a manifest (mirror used and MD5 per file)."""
    ds = DATASETS[name]
    if name == "digits":
        write_digits(out)
        used = {f: "sklearn.datasets.load_digits" for f in FILES}
    else:
        if ds.md5 is None:
            log.warning("data.name=idx has no known checksums: files are checked by IDX header and length only")
        md5 = dict(zip(FILES, ds.md5 or (None,) * len(FILES)))
        used = fetch_all(md5, mirrors or list(ds.mirrors), out, timeout_s, retries,
                         validate=validate_idx if ds.md5 is None else None)
    return {"dataset": name, "files": {f: {"mirror": used[f], "md5": m} for f, m in checksums(out, FILES).items()}}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="directory for the four .gz files")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    p = params.load(args.params)
    manifest = download(p.data.name, p.data.mirrors, args.out, p.data.timeout_s, p.data.retries)
    files.write_json(args.out / "manifest.json", manifest)
    log.info("%s: %d files in %s", p.data.name, len(manifest["files"]), args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
