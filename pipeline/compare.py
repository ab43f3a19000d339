"""Wording that respects noise: call a difference only when it is beyond the measured spread."""
from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level for accuracy tests


def speed(name_a: str, a: dict, name_b: str, b: dict, what: str = "samples/s") -> str:
    """Compare two throughputs by their interquartile ranges over repeats: a claim needs disjoint ranges."""
    ratio = a["median"] / b["median"] if b["median"] else float("nan")
    detail = f"{a['median']:,.0f} vs {b['median']:,.0f} {what}, {name_a}/{name_b} = {ratio:.2f}x"
    if a["q1"] > b["q3"]:
        return f"{name_a} is faster ({detail}; interquartile ranges do not overlap)"
    if b["q1"] > a["q3"]:
        return f"{name_b} is faster ({detail}; interquartile ranges do not overlap)"
    return f"no clear difference ({detail}; interquartile ranges overlap)"


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test on paired per-sample correctness (same test images, two models)."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def accuracy(name_a: str, seeds_a: list[float], name_b: str, seeds_b: list[float], p_mcnemar: float) -> str:
    """Verdict on test accuracy: McNemar on the first seed's predictions, plus Welch's t over seeds if >1 each."""
    ma, mb = float(np.mean(seeds_a)), float(np.mean(seeds_b))
    tests = [f"McNemar p = {p_mcnemar:.3g}"]
    significant = p_mcnemar < ALPHA
    if len(seeds_a) > 1 and len(seeds_b) > 1:
        p_t = float(stats.ttest_ind(seeds_a, seeds_b, equal_var=False).pvalue)
        p_t = 1.0 if np.isnan(p_t) else p_t  # identical seeds: no evidence of a difference
        tests.append(f"Welch t-test over seeds p = {p_t:.3g}")
        significant = significant and p_t < ALPHA  # both the test set and the seeds must agree
    detail = f"{100 * ma:.2f}% vs {100 * mb:.2f}%, {'; '.join(tests)}"
    if not significant or ma == mb:
        return f"no clear difference ({detail})"
    better = name_a if ma > mb else name_b
    return f"{better} is more accurate ({detail})"
