import json
import signal
import subprocess
import sys

import pytest

from pipeline import files
from tests.conftest import ROOT


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_killed_process_leaves_no_half_written_json(tmp_path):
    target = tmp_path / "bench.json"
    code = (f"import time; from pipeline import files\n"
            f"with files.atomic_path({str(target)!r}) as tmp:\n"
            f"    tmp.write_text('{{\"train_samples_per_s\": 1')\n"
            f"    print('writing', flush=True)\n"
            f"    time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not target.exists()


def test_json_has_no_nan_and_numpy_scalars_are_plain():
    import numpy as np

    out = files._clean({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]})
    assert out == {"a": None, "b": 1.5, "c": [2]}


def test_read_json_errors_name_the_file_and_stage(tmp_path):
    with pytest.raises(files.DataError, match=r"x.json: missing; run `dvc repro bench@a` first"):
        files.read_json(tmp_path / "x.json", "bench@a")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(files.DataError, match=r"x.json: malformed JSON \(line 1"):
        files.read_json(tmp_path / "x.json", "bench@a")


def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(files.DataError) as e:
        files.write_json(tmp_path / "metrics.json", {"a": 1})
    assert str(e.value) == f"{tmp_path / 'metrics.json'}: cannot write (no space left on device)"
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_other_os_errors_in_the_block_are_not_disguised_as_write_errors(tmp_path):
    with pytest.raises(ConnectionResetError):  # e.g. a download's dropped connection: retried upstream
        with files.atomic_path(tmp_path / "x.gz"):
            raise ConnectionResetError(errno_reset(), "Connection reset by peer")
    assert list(tmp_path.iterdir()) == []


def errno_reset() -> int:
    import errno
    return errno.ECONNRESET
