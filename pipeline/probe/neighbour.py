"""A busy neighbour: processes that busy-loop cores in a square wave, as other programs do.

    python -m pipeline.probe.neighbour --cores 1 --on 4 --off 4 [--seconds 600] [--phase 0]

Each of `cores` processes spins (a tight Python loop) for `on` seconds, then sleeps `off` seconds, and again, until
`seconds` have passed or it is stopped (Ctrl-C, SIGTERM: the processes end with it). `off 0` is a constant load.
The tests and the measurements of the bench under load use it; nothing in the pipeline starts it.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import time

from pipeline import files


def spin(on: float, off: float, until: float, phase: float) -> None:
    """Busy for `on` s, idle for `off` s, from `phase` s into the period, until the monotonic time `until`."""
    for s in (signal.SIGINT, *files.STOPS):  # stopped with the neighbour, silently
        signal.signal(s, signal.SIG_DFL)
    period = on + off
    start = time.monotonic() - phase
    while (now := time.monotonic()) < until:
        into = (now - start) % period if off else 0.0
        if into < on:
            end = min(until, now + on - into)
            while time.monotonic() < end:
                pass
        else:
            time.sleep(min(until - now, period - into))


def run(cores: int, on: float, off: float, seconds: float, phase: float = 0.0) -> None:
    """Load `cores` cores with the square wave for `seconds` (inf: until stopped); stopping ends every process."""
    until = time.monotonic() + seconds
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=spin, args=(on, off, until, phase), daemon=True) for _ in range(cores)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=1, help="processes, each busy-looping one core (count)")
    ap.add_argument("--on", type=float, default=4.0, help="busy part of the period (seconds)")
    ap.add_argument("--off", type=float, default=4.0, help="idle part of the period (seconds; 0 = always busy)")
    ap.add_argument("--seconds", type=float, default=float("inf"), help="how long to run (seconds)")
    ap.add_argument("--phase", type=float, default=0.0, help="where in the period to start (seconds)")
    a = ap.parse_args(argv)
    if a.cores < 1 or a.on <= 0 or a.off < 0 or a.seconds <= 0:
        raise SystemExit("error: neighbour: --cores >= 1, --on > 0, --off >= 0 and --seconds > 0")
    run(a.cores, a.on, a.off, a.seconds, a.phase)


if __name__ == "__main__":
    files.run(main)
