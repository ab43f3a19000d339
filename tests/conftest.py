"""Shared fixtures: params built from the repo's params.yaml with overrides, tiny IDX data, a local HTTP server."""
from __future__ import annotations

import http.server
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

from pipeline import params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


# Tests that need a CUDA GPU run where one is and are skipped (said, never faked) elsewhere; their CPU twins check
# the answer a machine without one gives.
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")


def with_signals(cmd: list[str], ignore: tuple[int, ...] = ()) -> list[str]:
    """`cmd` started with SIGINT, SIGTERM and SIGHUP at their defaults (those in `ignore` ignored), whatever this
    test run inherited: a runner started in the background ignores SIGINT, one under nohup SIGHUP, and a child
    inherits that. The wrapper sets them and execs `cmd`, in the same process."""
    code = ("import os, signal, sys\n"
            "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
            f"    signal.signal(s, signal.SIG_IGN if s in {tuple(int(s) for s in ignore)!r} else signal.SIG_DFL)\n"
            "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", code, *cmd]


def raw_params(**overrides: Any) -> dict:
    """params.yaml as a dict with dotted-key overrides, e.g. raw_params(**{"data.name": "digits"}). On the CPU
    (`device: cpu`) unless a test asks otherwise, so the suite checks the same logic on a GPU machine as on CI
    (params.yaml's `auto` would put it on the GPU there); what only a GPU can show is in test_cuda.py."""
    return params.override(yaml.safe_load((ROOT / "params.yaml").read_text()), **({"device": "cpu"} | overrides))


def write_params(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(raw_params(**overrides), sort_keys=False))
    return path


def tiny_idx(n_train: int = 60, n_test: int = 20, size: int = 8, classes: int = 10, seed: int = 0) -> dict:
    """Four small, learnable IDX arrays: each class a bright block at its own position plus noise."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        x = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, 2 * r:2 * r + 2, 2 * col:2 * col + 2] = 250
        return x, y.astype(np.uint8)
    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    from pipeline.data.datasets import FILES
    return dict(zip(FILES, (xtr, ytr, xte, yte)))


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A directory with prepared.npz of tiny_idx (200 training images, 8x8) and an empty env.json: enough for a
    stage that reads prepared data."""
    from pipeline.data import idx
    from pipeline.data.prepare import prepare, write_prepared
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, arr in tiny_idx(n_train=200, n_test=40, size=8).items():
        idx.write_idx(raw / name, arr)
    write_prepared(tmp_path / "prepared.npz", prepare(raw, None, 0.2, 0), "idx")
    (tmp_path / "env.json").write_text("{}")
    return tmp_path


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Callable[["_Handler"], None]] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.hits.append(self.path)
        for prefix, fn in self.routes.items():
            if self.path.startswith(prefix):
                return fn(self)
        self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1; tests register route prefixes -> handler functions."""
    handler = type("H", (_Handler,), {"routes": {}, "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.handler = handler
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"
