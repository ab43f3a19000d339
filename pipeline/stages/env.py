"""Stage `env` (always runs): the machine and software fingerprint."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import files, params
from pipeline.measure import env

log = logging.getLogger("env")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    fp = env.fingerprint(p.threads, p.device)
    for problem in (fp["gpu_unseen"], fp["oversubscribed"]):
        if problem:
            log.warning(problem)
    files.write_json(a.out, fp)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files.run(main)
