"""mnist-bench's pipeline. Importing it first checks that this Python has the project's packages.

A stage run by another interpreter (`.venv/bin/dvc repro` from a shell whose `python` is the system's, or a system
`dvc`) stops here in one line saying which Python ran and how to fix it, rather than in a traceback ending in
`ModuleNotFoundError: No module named 'tqdm'`.
"""
import importlib.util
import sys
from pathlib import Path

NEEDS = ("numpy", "yaml", "pydantic", "psutil", "pandas", "tqdm", "scipy", "threadpoolctl")  # what every stage uses


def _check() -> None:
    missing = next((m for m in NEEDS if importlib.util.find_spec(m) is None), None)
    if missing is None:
        return
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin"
    fix = (f"put {venv} first on PATH (`source .venv/bin/activate`, or run `make repro`, which does)"
           if (venv / "python").exists() else "run `make repro` (it makes .venv with requirements.txt and uses it)")
    print(f"error: {sys.executable} (Python {sys.version.split()[0]}) runs this stage, and it lacks the project's "
          f"packages (no module named {missing!r}): {fix}", file=sys.stderr)
    raise SystemExit(2)


_check()
