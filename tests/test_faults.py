"""Every OS-level fault a write meets, on a real small filesystem: one plain line naming the path and the cause,
exit 2, nothing half-written, the previous outputs kept.

Each case runs in a private mount namespace (`unshare`) holding a tmpfs of a few hundred KB, filled until the write
under test no longer fits (or remounted read-only), so the OS itself refuses the write; nothing outside the
namespace sees the mount. Where mount namespaces are not allowed the cases are skipped, said: the stages' patched-
write tests (test_files.py, test_train_stage.py) still run everywhere.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_params

FIXTURE = Path(__file__).parent / "fixtures" / "run"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}


def _namespace() -> list[str] | None:
    """The unshare prefix that may mount a tmpfs here: as root, a mount namespace; otherwise a user namespace too."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run(prefix + ["sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


NS = _namespace()
pytestmark = pytest.mark.skipif(NS is None, reason="mount namespaces are not allowed here (unshare --mount)")

# Inside the namespace: mount the small filesystem on DIR, put the old outputs there, fill it until FREE bytes are
# left (or make it read-only), run the command, and report what happened and what DIR holds afterwards.
INSIDE = r"""
import json, os, shutil, subprocess, sys
spec = json.loads(sys.argv[1])
d = spec["dir"]
os.makedirs(d, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size_kb']}k", "tmpfs", d], check=True)
if spec.get("old"):
    shutil.copytree(spec["old"], d, dirs_exist_ok=True)
if spec.get("ro"):
    subprocess.run(["mount", "-o", "remount,ro", d], check=True)
else:
    free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
    with open(os.path.join(d, ".fill"), "wb") as f:
        f.write(b"\0" * max(0, free - spec["free"]))
r = subprocess.run(spec["cmd"], cwd=spec.get("cwd"), capture_output=True, text=True, env=spec["env"])
files = {}
for root, _, names in os.walk(d):
    for n in names:
        p = os.path.join(root, n)
        if n != ".fill":
            files[os.path.relpath(p, d)] = open(p, "rb").read()[:200].decode("latin-1")
json.dump({"rc": r.returncode, "stderr": r.stderr, "stdout": r.stdout, "files": files}, open(spec["report"], "w"))
"""


def on_small_fs(tmp_path: Path, cmd: list[str], dir_: Path, free: int, size_kb: int = 2048, old: Path | None = None,
                ro: bool = False, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run `cmd` with `dir_` a fresh tmpfs of `size_kb` holding `old`'s files and then only `free` bytes (or made
    read-only). Returns the command's exit code and output, and what `dir_` holds afterwards (its files' first
    bytes)."""
    spec = {"dir": str(dir_), "size_kb": size_kb, "free": free, "old": str(old) if old else None, "ro": ro,
            "cmd": cmd, "env": env or ENV, "report": str(tmp_path / "report.json"), "cwd": str(cwd) if cwd else None}
    subprocess.run(NS + [sys.executable, "-c", INSIDE, json.dumps(spec)], check=True, timeout=300)
    return json.loads((tmp_path / "report.json").read_text())


def one_line(got: dict) -> str:
    """The stage's one line (its last; TensorFlow's own start-up messages may come before it), exit 2, no
    traceback."""
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("error:")]
    assert got["rc"] == 2 and said == lines[-1:] and "Traceback" not in got["stderr"], got["stderr"][-3000:]
    return said[0]


def stage(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pipeline.stages.{name}", *args]


@pytest.mark.parametrize("framework, model_file", [("torch", "model.pt"), ("tensorflow", "model.keras")])
def test_a_full_disk_while_the_model_is_saved_is_one_line_and_keeps_the_old_model(tmp_path, framework, model_file):
    out = tmp_path / "fs"
    old = tmp_path / "old"
    (old / "models").mkdir(parents=True)
    (old / "models" / model_file).write_text("the previous model")
    (old / "run").mkdir()
    (old / "run" / "metrics.json").write_text('{"previous": true}')
    params = write_params(tmp_path / "params.yaml", **{"data.name": "digits", "cnn.dense": 4096})  # a 3 MB model
    got = on_small_fs(tmp_path, stage("train", "--framework", framework, "--model", "cnn", "--data",
                                      str(FIXTURE / "data/prepared.npz"), "--out", str(out / "run"), "--model-out",
                                      str(out / "models"), "--params", str(params)),
                      out, free=600_000, size_kb=6144, old=old)
    assert one_line(got) == f"error: {out / 'models' / model_file}: cannot write (no space left on device)"
    assert got["files"] == {f"models/{model_file}": "the previous model", "run/metrics.json": '{"previous": true}'}


def test_a_full_disk_while_the_report_is_written_is_one_line_and_keeps_the_old_report(tmp_path):
    rep = tmp_path / "fs"
    old = tmp_path / "old"
    shutil.copytree(FIXTURE / "reports", old)
    (old / "summary.md").write_text("the previous report")
    got = on_small_fs(tmp_path, stage("report", "--results", str(rep), "--data", str(FIXTURE / "data/prepared.npz"),
                                      "--params", str(FIXTURE / "params.yaml")), rep, free=20_000, old=old)
    line = one_line(got)
    assert line.startswith(f"error: {rep}/") and line.endswith(": cannot write (no space left on device)")
    assert got["files"]["summary.md"] == "the previous report"
    assert not [f for f in got["files"] if Path(f).name.startswith(".") or ".part" in f]  # no temp file left


def test_a_read_only_checkout_is_one_line_naming_the_output(tmp_path):
    rep = tmp_path / "fs"
    old = tmp_path / "old"
    shutil.copytree(FIXTURE / "reports", old)
    got = on_small_fs(tmp_path, stage("report", "--results", str(rep), "--data", str(FIXTURE / "data/prepared.npz"),
                                      "--params", str(FIXTURE / "params.yaml")), rep, free=0, old=old, ro=True)
    line = one_line(got)
    assert line.startswith(f"error: {rep}/") and line.endswith(": cannot write (read-only file system)")


def test_a_full_disk_while_the_bench_writes_its_records_is_one_line_and_keeps_the_old_ones(tmp_path):
    out = tmp_path / "fs"
    old = tmp_path / "old"
    old.mkdir()
    (old / "records.json").write_text('{"old": true}')
    params = write_params(tmp_path / "params.yaml", **{"data.name": "digits", "frameworks": ["torch"], "models":
                                                       ["mlp"], "mlp.hidden": [8], "bench.steps": 2, "bench.repeats":
                                                       3, "bench.warmup": 1, "bench.min_repeat_s": 0, "bench.repeat_max_s": 2,
                                                       "bench.latency_calls": 20, "bench.control": False,
                                                       "bench.infer_batch_sizes": [64], "bench.max_s": 1,
                                                       "bench.calib_s": 0.05})
    got = on_small_fs(tmp_path, stage("bench", "--data", str(FIXTURE / "data/prepared.npz"), "--env",
                                      str(FIXTURE / "reports/env.json"), "--out", str(out), "--params", str(params)),
                      out, free=8_000, old=old)
    assert one_line(got) == f"error: {out / 'records.json'}: cannot write (no space left on device)"
    assert got["files"] == {"records.json": '{"old": true}'}


# The stage with tempfile's fallbacks (/tmp, /var/tmp, /usr/tmp, the working directory) gone, as on a machine
# where they are all full: only $TMPDIR is tried, and it is full (covering /tmp itself would hide a checkout there)
ONLY_TMPDIR = ("import os, runpy, sys, tempfile\n"
               "tempfile._candidate_tempdir_list = lambda: [os.environ['TMPDIR']]\n"
               "sys.argv = ['bench', *sys.argv[1:]]\n"
               "runpy.run_module('pipeline.stages.bench', run_name='__main__', alter_sys=True)")


def test_no_usable_temporary_directory_is_one_line_saying_what_to_free(tmp_path):
    params = write_params(tmp_path / "params.yaml", **{"data.name": "digits", "frameworks": ["torch"],
                                                       "models": ["mlp"], "bench.control": False})
    full = tmp_path / "fs"
    got = on_small_fs(tmp_path, [sys.executable, "-c", ONLY_TMPDIR, "--data", str(FIXTURE / "data/prepared.npz"),
                                 "--env", str(FIXTURE / "reports/env.json"), "--out", str(tmp_path / "out"),
                                 "--params", str(params)],
                      full, free=0, size_kb=4, cwd=ROOT, env=ENV | {"TMPDIR": str(full)})
    assert one_line(got) == ("error: no usable temporary directory: $TMPDIR, /tmp and the others are full or "
                             "read-only; free space there or set TMPDIR to a writable directory")


def test_a_full_disk_for_dvc_s_cache_names_it_without_a_traceback(tmp_path):
    repo = tmp_path / "fs"
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / f, src / f)
    write_params(src / "params.yaml", **{"data.name": "digits"})
    script = (f"set -e; cd {repo}; git init -q; {sys.executable} -m dvc init -q; "
              f"{sys.executable} -m dvc repro -q download; "
              # prepare writes its 130 KB output, and DVC's copy of it into .dvc/cache no longer fits
              f"{sys.executable} -c \"import os; s = os.statvfs('.'); "
              f"open('.fill2', 'wb').write(bytes(max(0, s.f_bavail * s.f_frsize - 180_000)))\"; "
              f"{sys.executable} -m dvc repro prepare")
    got = on_small_fs(tmp_path, ["sh", "-c", script], repo, free=10**7, size_kb=20_000, old=src, cwd=None,
                      env=ENV | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                 "GIT_COMMITTER_EMAIL": "t@t"})
    err = got["stderr"]
    assert got["rc"] != 0 and "Traceback" not in err
    # DVC's own words: the file it was copying into its cache, and the cause
    assert "No space left on device" in err and f"{repo}/data/prepared.npz" in err, err[-3000:]
