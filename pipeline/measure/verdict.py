"""Wording that respects noise: call a difference only when the evidence excludes "the same".

Speed: one ratio per round (two fresh processes measured back to back), an exact distribution-free confidence
interval for the median ratio (order statistics; the sign-test interval), and a minimum effect. Accuracy: a paired
test over seeds (same initial weights and batch order in both frameworks), or McNemar on one seed's test set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level of every verdict
NAN = float("nan")


@dataclass(frozen=True, kw_only=True)
class Said:
    """What a verdict rule says: the line (a verdict with its evidence, or "no verdict: <reason>"), the winner's name
    (None for no clear difference or no verdict), and the median ratio a/b with its exact interval."""
    text: str
    winner: str | None = None
    ratio: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    coverage: float = NAN     # of the interval (>= 1 - ALPHA)
    rounds: int = 0           # the paired values it rests on: rounds of fresh processes, or seeds

    def withheld(self, why: str) -> "Said":
        """The same evidence, its verdict withheld by a gate that says why."""
        return replace(self, winner=None, text=f"no verdict: {why}")


@dataclass(frozen=True, kw_only=True)
class Verdict(Said):
    """One comparison the bench gives: arm a's rate over arm b's for a model and phase, from the rounds whose two
    children met the same machine (`ratios`, one per round); bench.vary's setting arm, if it is one."""
    model: str
    phase: str
    a: str
    b: str
    control: bool = False
    setting: str | None = None
    workers: int | None = None  # a scaling verdict's worker count
    ratios: list[float] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Reaching(Said):
    """A time-to-target verdict: steps to target of each (its first seed), and the time ratio a/b's range."""
    steps_a: int | None = None
    steps_b: int | None = None
    time_ratio_low: float = NAN
    time_ratio_high: float = NAN
    how: str = ""             # seeds (paired over seeds), steps x bench (one seed's steps, the bench's per step)


def median_ci(values: list[float], alpha: float = ALPHA) -> tuple[float, float, float] | None:
    """(coverage, low, high): the narrowest order-statistic interval [x_(j), x_(n+1-j)] for the median with
    coverage >= 1 - alpha, from the binomial(n, 1/2) law of how many values fall below the median.
    None when n is too small for any such interval (n < 6 at alpha 0.05)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    best = None
    for j in range(1, n // 2 + 1):  # j-th smallest to j-th largest
        coverage = 1.0 - 2.0 * stats.binom.cdf(j - 1, n, 0.5)
        if coverage >= 1.0 - alpha:
            best = (float(coverage), float(x[j - 1]), float(x[n - j]))
    return best


def min_rounds(alpha: float = ALPHA) -> int:
    """The fewest rounds for which median_ci can reach 1 - alpha: 1 - 2 * 0.5**n >= 1 - alpha."""
    return math.ceil(math.log2(2.0 / alpha))


def speed(name_a: str, name_b: str, ratios: list[float], min_effect: float, alpha: float = ALPHA,
          unit: str = "rounds") -> Said:
    """Verdict on per-round rate ratios a/b: a winner only when the median ratio's interval excludes 1 and the
    median itself is at least `min_effect` away from 1 (a difference too small to matter is not called)."""
    med = float(np.median(ratios)) if len(ratios) else NAN
    ci = median_ci(ratios, alpha)
    if ci is None:
        return Said(text=f"no verdict: {len(ratios)} usable {unit}; at least {min_rounds(alpha)} are needed for a "
                         f"{100 * (1 - alpha):.0f}% interval", ratio=med, rounds=len(ratios))
    got = {"ratio": med, "ci_low": ci[1], "ci_high": ci[2], "coverage": ci[0], "rounds": len(ratios)}
    detail = (f"{name_a}/{name_b} = {med:.2f}x, {100 * ci[0]:.1f}% CI {ci[1]:.2f}–{ci[2]:.2f}, "
              f"{len(ratios)} {unit}")
    if ci[1] > 1.0 and med >= 1.0 + min_effect:
        return Said(text=f"{name_a} is faster ({detail})", winner=name_a, **got)
    if ci[2] < 1.0 and med <= 1.0 / (1.0 + min_effect):
        return Said(text=f"{name_b} is faster ({detail})", winner=name_b, **got)
    return Said(text=f"no clear difference ({detail})", **got)


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """Do two validation curves, evaluated at the same steps on the same images, agree within that set's noise?"""
    agree: bool
    text: str
    evaluations: int = 0
    max_gap_se: float = NAN  # the largest gap, in standard errors of a gap between two readings
    bound_se: float = NAN    # the largest gap allowed (Bonferroni over the evaluations)
    p_signed_rank: float = NAN  # against "neither curve lies above the other"


def curves_agree(acc_a: list[float], acc_b: list[float], n_val: int, alpha: float = ALPHA) -> Agreement:
    """Two frameworks' validation accuracies at the same steps (the same weights, batches and masks in both).

    They agree when no evaluation's gap exceeds the validation set's own noise (a gap between two readings of
    accuracy p on n images has standard error sqrt(2 p (1 - p) / n); the bound is Bonferroni's over the
    evaluations) and neither curve lies above the other more often or by more than chance allows (Wilcoxon
    signed-rank, p >= alpha): a framework that learned slower per step, or differently, fails one or the other.
    Near a plateau such curves cross the target at steps that differ by a draw of that noise, not by the maths."""
    a, b = np.asarray(acc_a, np.float64), np.asarray(acc_b, np.float64)
    k = len(a)
    if k < 3 or len(b) != k or n_val < 1:
        return Agreement(agree=False, text=f"{k} evaluation(s) in common, too few to compare the curves",
                         evaluations=k)
    p = np.clip((a + b) / 2, 0.5 / n_val, 1 - 0.5 / n_val)
    gap = np.abs(a - b) / np.sqrt(2 * p * (1 - p) / n_val)
    bound = float(stats.norm.ppf(1 - alpha / (2 * k)))
    d = a - b
    prank = 1.0 if not np.any(d) else float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    worst = int(np.argmax(gap))
    facts = (f"largest gap {abs(d[worst]):.4f} = {gap[worst]:.1f} SE of {n_val:,} images (bound {bound:.1f} over "
             f"{k} evaluations), signed-rank p = {prank:.2f}")
    agree = bool(gap[worst] <= bound and prank >= alpha)
    return Agreement(agree=agree, text=("the validation curves agree: " if agree else
                                        "the validation curves differ beyond noise: ") + facts,
                     evaluations=k, max_gap_se=float(gap[worst]), bound_se=bound, p_signed_rank=prank)


def time_to_target(name_a: str, name_b: str, window_a: tuple[int, int] | None,
                   window_b: tuple[int, int] | None, per_step: Said,
                   curves: Agreement | None = None) -> Reaching:
    """Time-to-target verdict from one seed: time = steps to target x time per step.

    A window (since, at) says the target was crossed after step `since` (the evaluation before) and by step `at`
    (the first evaluation at or above it): steps to target are known to that resolution. The frameworks train the
    same maths from the same weights, batch order and dropout masks, so when their counts agree to within one
    evaluation the interleaved per-step speed verdict (`per_step`: rate a / rate b, interval [lo, hi]) carries the
    time-to-target one. Met at the same evaluation, the steps count as equal and time a / time b lies in
    [1 / hi, 1 / lo]; met at adjacent evaluations, each count is known only to its window, and time a / time b lies
    in [since_a / at_b / hi, at_a / since_b / lo]. A winner needs the per-step winner and that whole range on its
    side of 1. Counts further apart: where the two validation curves agree (`curves`, curves_agree) the crossing was
    a draw of the validation noise on a flat curve, the steps are the same in expectation, and the per-step verdict
    carries the time one as at the same evaluation; otherwise one seed cannot tell a framework's steps from a
    seed's, so no verdict."""
    base = {"steps_a": window_a and window_a[1], "steps_b": window_b and window_b[1], "rounds": per_step.rounds,
            "how": "steps x bench"}
    missing = [n for n, w in ((name_a, window_a), (name_b, window_b)) if w is None]
    if missing:
        return Reaching(text=f"no verdict: {' and '.join(missing)} did not reach the target", **base)
    (since_a, at_a), (since_b, at_b) = window_a, window_b
    cadence = max(at_a - since_a, at_b - since_b)
    steps = f"{at_a:,} vs {at_b:,} steps to target"
    apart = abs(at_a - at_b) > cadence
    if apart and not (curves and curves.agree):
        return Reaching(text=(f"no verdict: from one seed, {steps}, more than one evaluation ({cadence} steps) "
                              "apart, and one seed cannot tell a framework's steps from a seed's"
                              + (f" ({curves.text})" if curves else "") + " (train.repeats: 6 gives a direct "
                              f"verdict); per step: {per_step.text}"), **base)
    same = (f"{steps}, a crossing of flat curves: {curves.text}, so the same steps in expectation" if apart
            else f"{steps}, the same to within one evaluation ({cadence} steps)")
    if apart:
        base["how"] = "curves x bench"
    if per_step.text.startswith("no verdict"):
        return Reaching(text=f"no verdict: {same}, but per step {per_step.text}", **base)
    if at_a == at_b or apart:  # the same maths, so the same steps (in expectation); time ratio = 1 / rate ratio
        low, high = 1 / per_step.ci_high, 1 / per_step.ci_low
    else:  # at adjacent evaluations: each count is known only to its window
        low = since_a / at_b / per_step.ci_high
        high = at_a / since_b / per_step.ci_low if since_b else math.inf
    base |= {"time_ratio_low": low, "time_ratio_high": high}
    span = f"time {name_a}/{name_b} in {low:.2f}–{high:.2f}x"
    winner = per_step.winner
    if (winner == name_a and high < 1) or (winner == name_b and low > 1):
        return Reaching(text=f"{winner} reaches the target faster: {same}, and per step {per_step.text}; {span}",
                        winner=winner, **base)
    if winner:
        return Reaching(text=f"no clear difference: {same}, and per step {per_step.text}, but {span} spans 1 once "
                             "the steps' resolution is counted", **base)
    return Reaching(text=f"no clear difference: {same}, and per step {per_step.text}", **base)


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test on paired per-sample correctness (same test images, two models)."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def accuracy(name_a: str, seeds_a: list[float], name_b: str, seeds_b: list[float], p_mcnemar: float,
             only_a: int, only_b: int) -> str:
    """Verdict on test accuracy. Several seeds: a paired t-test over seeds (seed k of both frameworks shares its
    initial weights and batch order), since seed-to-seed spread is the noise a framework choice must beat. One
    seed: McNemar can only say that these two trained models differ on this test set, not that a framework is."""
    ma, mb = float(np.mean(seeds_a)), float(np.mean(seeds_b))
    if len(seeds_a) > 1 and len(seeds_a) == len(seeds_b):
        diffs = np.subtract(seeds_a, seeds_b)
        p = 1.0 if np.allclose(diffs, diffs[0]) and diffs[0] == 0 else float(stats.ttest_rel(seeds_a, seeds_b).pvalue)
        p = 1.0 if np.isnan(p) else p
        detail = f"{100 * ma:.2f}% vs {100 * mb:.2f}%, paired t-test over {len(seeds_a)} seeds p = {p:.3g}"
        if p < ALPHA and ma != mb:
            return f"{name_a if ma > mb else name_b} is more accurate ({detail})"
        return f"no clear difference ({detail})"
    detail = (f"{100 * ma:.2f}% vs {100 * mb:.2f}%; right only in {name_a}: {only_a}, only in {name_b}: {only_b}; "
              f"McNemar p = {p_mcnemar:.3g}; one seed")
    if p_mcnemar < ALPHA and only_a != only_b:
        better = name_a if only_a > only_b else name_b
        return (f"these two trained models differ on the test set, {better}'s is right more often ({detail}); "
                "more seeds (train.repeats) are needed to say it of the framework")
    return f"no clear difference ({detail})"


def _rank_sum_counts(n: int, m: int) -> np.ndarray:
    """How many of the C(n+m, n) orderings of two samples give each Mann-Whitney U (0..n*m), with no ties."""
    table = {(0, j): np.ones(1) for j in range(m + 1)} | {(i, 0): np.ones(1) for i in range(n + 1)}
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            counts = np.zeros(i * j + 1)
            counts[j:] += table[(i - 1, j)]                  # the largest value is from the first sample: U + j
            counts[:(i * (j - 1)) + 1] += table[(i, j - 1)]  # from the second: U unchanged
            table[(i, j)] = counts
    return table[(n, m)]


def shift_ci(a: list[float], b: list[float], alpha: float = ALPHA) -> tuple[float, float, float, float] | None:
    """(estimate, coverage, low, high) of b/a for two independent samples of positive values: the Hodges-Lehmann
    estimate of the shift of log values and its exact distribution-free interval from the Mann-Whitney law (the
    order statistics of all n*m pairwise differences). None when the samples are too small for 1 - alpha."""
    la, lb = np.log(np.asarray(a, np.float64)), np.log(np.asarray(b, np.float64))
    n, m = len(la), len(lb)
    if n == 0 or m == 0:
        return None
    diffs = np.sort((lb[None, :] - la[:, None]).ravel())
    cdf = np.cumsum(_rank_sum_counts(n, m)) / math.comb(n + m, n)
    best = None
    for k in range(1, n * m // 2 + 1):  # [d_(k), d_(nm+1-k)] covers with probability 1 - 2 P(U <= k - 1)
        coverage = 1.0 - 2.0 * cdf[k - 1]
        if coverage >= 1.0 - alpha:
            best = (float(coverage), float(np.exp(diffs[k - 1])), float(np.exp(diffs[n * m - k])))
    if best is None:
        return None
    return (float(np.exp(np.median(diffs))),) + best


@dataclass(frozen=True, kw_only=True)
class Change(Said):
    """A change between two experiments (after/before): "faster", "slower" or None, over two independent samples."""
    change: str | None = None
    n_before: int = 0
    n_after: int = 0


def change(name: str, before: list[float], after: list[float], min_effect: float, higher_is_faster: bool = True,
           unit: str = "rounds", alpha: float = ALPHA) -> Change:
    """Verdict on a change between two independent runs (two experiments: not interleaved, so unpaired):
    `after`/`before` ratio with its interval; "faster"/"slower" only when the interval excludes 1 and the ratio is
    at least `min_effect` away from it. For times (`higher_is_faster=False`) a ratio below 1 is faster."""
    got = shift_ci(before, after, alpha)
    n = {"n_before": len(before), "n_after": len(after)}
    if got is None:
        return Change(text=f"no verdict: {len(before)} and {len(after)} {unit}; too few for a "
                           f"{100 * (1 - alpha):.0f}% interval", **n)
    est, cov, low, high = got
    fig = {"ratio": est, "ci_low": low, "ci_high": high, "coverage": cov} | n
    detail = f"{name} {est:.2f}x, {100 * cov:.1f}% CI {low:.2f}–{high:.2f}, {len(before)} vs {len(after)} {unit}"
    up, down = low > 1.0 and est >= 1.0 + min_effect, high < 1.0 and est <= 1.0 / (1.0 + min_effect)
    if up or down:
        said = "faster" if up == higher_is_faster else "slower"
        return Change(text=f"{said} ({detail})", change=said, **fig)
    return Change(text=f"no clear difference ({detail})", **fig)
