"""The committed example reports say what made them, and say so when the code has changed since."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from pipeline import params
from pipeline.errors import DataError, ParamsError
from pipeline.report import examples
from tests.conftest import ROOT, raw_params


def test_every_example_s_first_line_is_its_stamp_and_names_code_that_changed_since():
    code = examples.code_digest()
    readmes = sorted((ROOT / "reports").glob("example-*/README.md"))
    assert readmes, "reports/ has no example report"
    for readme in readmes:
        first = readme.read_text().partition("\n")[0]
        m = examples.STAMP.search(first)
        older = first.startswith(examples.OLDER)
        assert m or older, f"{readme.relative_to(ROOT)}: the first line is not a stamp: {first[:80]!r}"
        assert older or m["code"] == code, (f"{readme.relative_to(ROOT)}: made from other code ({m['code']}, now "
                                            f"{code}); run `python -m pipeline.report.examples --mark`")


def test_every_recorded_example_is_valid_params_and_has_its_report():
    for name, ex in examples.recorded().items():
        params.parse(params.override(raw_params(), **ex["set"]))
        assert (ROOT / f"reports/example-{name}/summary.md").is_file(), f"`make examples` has not made {name}"


def test_mark_prefixes_only_examples_made_from_other_code_and_only_once(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    code = examples.code_digest(tmp_path)
    stamp = "Example `{}`, made by `make examples` at commit abcdef1, code {}: data `digits`.\n\n# body\n"
    for name, digest in (("new", code), ("old", "0" * 12)):
        (tmp_path / f"reports/example-{name}").mkdir(parents=True)
        (tmp_path / f"reports/example-{name}/README.md").write_text(stamp.format(name, digest))
    assert examples.mark(tmp_path) == [tmp_path / "reports/example-old/README.md"]
    old = (tmp_path / "reports/example-old/README.md").read_text()
    assert old.startswith(examples.OLDER) and old.endswith(stamp.format("old", "0" * 12).partition("\n")[0]
                                                           + "\n\n# body\n")
    assert (tmp_path / "reports/example-new/README.md").read_text() == stamp.format("new", code)
    assert examples.mark(tmp_path) == []  # marked once
    (tmp_path / "pipeline/spec.py").write_text("# another code\n")  # the code changes: the new one is old now
    assert examples.code_digest(tmp_path) != code and examples.mark(tmp_path) == [
        tmp_path / "reports/example-new/README.md"]


def test_a_bad_recorded_example_is_one_line_before_anything_runs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    with pytest.raises(ParamsError, match=r"^params.yaml: train.batch_size: expected an integer >= 1 .*, got 0$"):
        examples.make("bad", {"about": "x", "set": {"train.batch_size": 0}}, repo)
    assert not (repo / "reports").exists()  # nothing written
    (tmp_path / "plain").mkdir()  # not a git repository: git's own reason, in one line
    with pytest.raises(DataError, match=r"^git rev-parse HEAD: fatal: not a git repository"):
        examples.make("x", {"about": "x", "set": {}}, tmp_path / "plain")
    record = tmp_path / "examples.yaml"
    record.write_text(yaml.safe_dump({"one": {"about": "x"}}))
    with pytest.raises(DataError, match=r"each example needs exactly `about` and `set` \(bad: one\)"):
        examples.recorded(record)
