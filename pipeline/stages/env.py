"""Stage `env` (always runs): the machine and software fingerprint."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import files, params
from pipeline.measure import env


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args(argv)
    p = params.load(a.params)
    files.write_json(a.out, env.fingerprint(p.threads, p.device))


if __name__ == "__main__":
    files.run(main)
