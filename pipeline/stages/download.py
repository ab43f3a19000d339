"""Stage `download`: the four IDX files of data.name, checksummed (digits written offline)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import files, params
from pipeline.data.download import download

log = logging.getLogger("download")


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
