"""Drift gates between experiments: a repeat of the baseline; measures a change cannot touch.

Experiments run minutes apart, one after the other, so the machine's drift lands on one side of every comparison,
and the per-process GEMM does not follow it closely enough to remove it. Two checks catch it:

- **The control between experiments**: a repeat of the baseline (the same params, another experiment) must read
  "no clear difference" on every measure; when it does not, every speed verdict of the comparison is withheld.
- **Measures the change cannot touch**: each param can affect only some measures (a training batch size cannot
  change inference at a fixed inference batch size); a "faster" or "slower" on a measure none of the changed params
  can touch flags that experiment's comparison as noise-dominated, naming the measure, and withholds its speed
  verdicts.
"""
from __future__ import annotations

import pandas as pd

SPEED = ("training rate", "inference rate", "time to target")  # the measures compare.verdicts judges
# What a param can change, by key prefix (the longest prefix that matches wins); a key matching none can change
# every measure (threads, device, the networks, the dataset, the frameworks).
TOUCHES: dict[str, tuple[str, ...]] = {
    "bench.": (),                      # how speed is measured, not how fast anything runs
    "loaders.": (),                    # the loader sweep has its own stage and measures, not judged here
    "data.mirrors": (), "data.timeout_s": (), "data.retries": (),
    "train.repeats": (),               # more seeds: a larger sample, not another value
    "train.eval_batch_size": (),       # evaluation is outside the training clock and the bench
    "train.stop_at_target": (),
    "train.batch_size": ("training rate", "time to target"),  # inference runs at bench.infer_batch_sizes
    "train.optimizer": ("training rate", "time to target"),   # Adam's step costs more than SGD's
    "train.momentum": ("time to target",), "train.beta1": ("time to target",), "train.beta2": ("time to target",),
    "train.eps": ("time to target",), "train.eval_every_samples": ("time to target",),
    "schedule.": ("time to target",), "target.": ("time to target",), "seed": ("time to target",),
    "data.val_fraction": ("time to target",),
}


def touched(key: str) -> tuple[str, ...]:
    """The measures a change of `key` can affect."""
    match = max((p for p in TOUCHES if key == p or (p.endswith(".") and key.startswith(p))), key=len, default=None)
    return SPEED if match is None else TOUCHES[match]


def untouched(keys: list[str]) -> list[str]:
    """The measures none of the changed params can affect: a "change" there is the machine, not the params."""
    hit = {m for k in keys for m in touched(k)}
    return [m for m in SPEED if m not in hit]


def is_repeat(params: dict, base_params: dict) -> bool:
    """The same params as the baseline: a control between experiments."""
    keys = set(params) | set(base_params)
    return all(repr(params.get(k)) == repr(base_params.get(k)) for k in keys)


def apply(v: pd.DataFrame, changed_by: dict[str, list[str]], repeats: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The verdicts table with the two gates applied, and the lines that say what they found.

    `changed_by`: per experiment, the params that differ from the baseline; `repeats`: experiments with the
    baseline's params. A tripped gate turns the verdicts it covers into "no verdict" with its reason, as a tripped
    A/A control does inside one run."""
    if v.empty:
        return v, []
    v, lines = v.copy(), []
    called = v["change"].isin(["faster", "slower"])
    tripped = v[called & v["experiment"].isin(repeats)]
    if len(tripped):
        first = tripped.iloc[0]
        why = (f"the repeat of the baseline `{first['experiment']}` read {first['change']} on {first['measure']} "
               f"({first['framework']} {first['model']}, {first['ratio']:.2f}x): drift between the experiments is "
               "beyond what the rule separates")
        lines.append(f"**Control between experiments tripped**: {why}; every speed verdict below is withheld.")
        return _withhold(v, v["change"] != "no verdict", why), lines
    if not repeats:
        lines.append("No repeat of the baseline in this comparison, so drift between the experiments is unchecked: "
                     "add one with the baseline's params (`dvc exp run -n <baseline>-again --force`), or compare "
                     "settings as interleaved arms of one bench run.")
    else:
        lines.append(f"Control between experiments: the repeat{'s' * (len(repeats) > 1)} of the baseline "
                     f"({', '.join(f'`{r}`' for r in repeats)}) read no clear difference on every measure.")
    for exp, keys in changed_by.items():
        free = untouched(keys)
        noisy = v[called & (v["experiment"] == exp) & v["measure"].isin(free)]
        if len(noisy):
            n = noisy.iloc[0]
            why = (f"{n['measure']} read {n['change']} ({n['framework']} {n['model']}, {n['ratio']:.2f}x), but "
                   f"{', '.join(f'`{k}`' for k in keys)} cannot change it: this comparison is noise-dominated")
            lines.append(f"**`{exp}` against the baseline**: {why}; its speed verdicts are withheld.")
            v = _withhold(v, (v["experiment"] == exp) & (v["change"] != "no verdict"), why)
    return v, lines


def _withhold(v: pd.DataFrame, rows: pd.Series, why: str) -> pd.DataFrame:
    v.loc[rows, "verdict"] = [f"no verdict: {why}; measured: {t}" for t in v.loc[rows, "verdict"]]
    v.loc[rows, "change"] = "no verdict"
    return v
