"""The one statistics helper: median, quartiles, IQR and CV of repeated measurements."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    median: float
    q1: float
    q3: float
    iqr: float
    cv_pct: float  # 100 x sample std / mean; 0 for a single value (no spread measured, not "none")
    n: int


def spread(values: list[float] | np.ndarray) -> Spread:
    """The spread of `values`; NaN figures with n = 0 for none (every measurement of it was left out)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return Spread(*[float("nan")] * 5, 0)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    mean = v.mean()
    cv = float(100.0 * v.std(ddof=1) / mean) if len(v) > 1 and mean > 0 else 0.0
    return Spread(float(med), float(q1), float(q3), float(q3 - q1), cv, int(len(v)))
