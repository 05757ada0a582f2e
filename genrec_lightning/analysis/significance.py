"""Paired significance tests for two recommenders evaluated on the same test users.

Why paired and per user: the spread of a metric across training seeds is often larger than the
difference between two methods, so comparing seed means (n = number of seeds) rarely shows
anything. Both methods are, however, scored on the same users, and most of the user-to-user
variation is shared. Testing the per-user differences d = a - b (each entry a user's metric,
typically already averaged over seeds) removes that shared variation.

Tests:

* `paired_t_test`: the paired t-test on d (as `scipy.stats.ttest_rel`), the headline test, as in
  the token-weighting paper's Table 3 (significant at p < 0.05).
* `wilcoxon_signed_rank`: the Wilcoxon signed-rank test on d, zero differences discarded. Top-k
  metrics put many users at 0 for both methods and take few distinct values, so d is far from
  normal; this rank test is the robustness check that does not rely on normality.
* `bootstrap_relative_ci`: a percentile bootstrap confidence interval of the relative difference
  mean(a) / mean(b) - 1 (how papers report gains: "+4.1 %"). It resamples users with
  replacement, the same users for a and b, so the pairing is kept; seeds are not resampled.
* `minimum_detectable_difference`: how large a mean difference the paired t-test would detect,
  to tell "no effect" from "too few users to see one".

`compare_paired` runs all of them and returns a `PairedComparison`. Only numpy and scipy are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "BOOTSTRAP_CHUNK_ELEMENTS",
    "PairedComparison",
    "bootstrap_relative_ci",
    "compare_paired",
    "minimum_detectable_difference",
    "paired_t_test",
    "wilcoxon_signed_rank",
]

BOOTSTRAP_CHUNK_ELEMENTS = 10_000_000
"""About how many resampled indices the bootstrap holds at once (bounds memory for 1M users)."""


def _validate_pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both vectors as float64, or a one-line ValueError naming what is wrong with them."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 1:
            raise ValueError(f"{name} must be a 1-D vector of per-user values, got shape {x.shape}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"length mismatch: a has {a.shape[0]} users and b has {b.shape[0]}; "
            "a paired test needs the same users in the same order"
        )
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 users for a paired test, got n = {a.shape[0]}")
    for name, x in (("a", a), ("b", b)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); every user needs a value")
    return a, b


def _t_test(d: np.ndarray) -> tuple[float, float]:
    """Paired t-test on validated differences, with exact answers for constant differences."""
    n = d.shape[0]
    if np.all(d == d[0]):
        # sd = 0: scipy returns nan (all zero) or a rounding-noise t; the exact answers are these.
        if d[0] == 0:
            return 0.0, 1.0
        return math.copysign(math.inf, float(d[0])), 0.0
    mean = float(np.mean(d))
    sd = float(np.std(d, ddof=1))
    t = mean / (sd / math.sqrt(n))
    p = float(2.0 * stats.t.sf(abs(t), n - 1))
    return t, min(p, 1.0)


def _wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Wilcoxon signed-rank test on validated differences; all-zero differences give p = 1."""
    if not np.any(d):
        return 0.0, 1.0
    res = stats.wilcoxon(d, zero_method="wilcox", correction=False, alternative="two-sided", method="auto")
    return float(res.statistic), float(res.pvalue)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int, confidence: float, seed: int, chunk_elements: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a)/mean(b) - 1 on validated vectors."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    _check_confidence(confidence)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    n = a.shape[0]
    if np.mean(b) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, chunk_elements // n)
    ratios = []
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        # One (rows, n) draw consumes the generator exactly like `rows` draws of size n in a row,
        # so the result does not depend on the chunk size (tested).
        idx = rng.integers(0, n, size=(rows, n))
        mean_a = a[idx].mean(axis=1)
        mean_b = b[idx].mean(axis=1)
        keep = mean_b != 0
        ratios.append(mean_a[keep] / mean_b[keep] - 1.0)
        done += rows
    r = np.concatenate(ratios)
    if r.size == 0:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(r, [tail, 100.0 - tail])
    return float(low), float(high)


def _mdd(differences_sd: float, n: int, alpha: float, power: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not math.isfinite(differences_sd) or differences_sd < 0:
        raise ValueError(f"differences_sd must be finite and >= 0, got {differences_sd}")
    df = int(n) - 1
    factor = stats.t.ppf(1.0 - alpha / 2.0, df) + stats.t.ppf(power, df)
    return float(factor * differences_sd / math.sqrt(n))


def paired_t_test(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test on d = a - b, per user; t > 0 means a is higher.

    Same numbers as `scipy.stats.ttest_rel(a, b)`, except where every difference is equal (sd = 0):
    all zero gives (0.0, 1.0), since identical runs must not differ; a constant non-zero
    difference gives (±inf, 0.0). Raises ValueError for mismatched lengths, non-1-D input,
    non-finite values or fewer than 2 users.
    """
    a, b = _validate_pair(a, b)
    return _t_test(a - b)


def wilcoxon_signed_rank(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """(statistic, two-sided p) of the Wilcoxon signed-rank test on d = a - b, zero differences dropped.

    The normality-free check next to the t-test. Calls `scipy.stats.wilcoxon` with
    zero_method="wilcox" and method="auto": an exact p-value for at most 50 users without ties or
    zero differences, an exhaustive sign-flip permutation p-value for at most 13 users with ties or
    zeros, and otherwise the normal approximation with tie correction (no continuity correction).
    The statistic is min(W+, W-). All-zero differences give (0.0, 1.0). Validates like
    `paired_t_test`.
    """
    a, b = _validate_pair(a, b)
    return _wilcoxon(a - b)


def bootstrap_relative_ci(
    a: ArrayLike,
    b: ArrayLike,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    chunk_elements: int = BOOTSTRAP_CHUNK_ELEMENTS,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the relative difference mean(a) / mean(b) - 1.

    Each replicate resamples n users with replacement and uses the same users for a and b (the
    pairing is kept); per-user values are taken as given, so seed variation already averaged into
    them is not resampled. Replicates are drawn with `numpy.random.default_rng(seed)` as
    `rng.integers(0, n, size=n)` one after another; they are generated in chunks of about
    `chunk_elements` indices to bound memory, which gives exactly the same indices. Percentiles use
    `numpy.percentile` (linear interpolation). If mean(b) is 0 the relative difference is undefined
    and (nan, nan) is returned; replicates whose resampled mean(b) is 0 are dropped (the interval
    then conditions on mean(b) != 0), and if all are dropped the result is (nan, nan).
    """
    a, b = _validate_pair(a, b)
    return _bootstrap(a, b, resamples, confidence, seed, chunk_elements)


def minimum_detectable_difference(
    differences_sd: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest absolute mean difference a two-sided paired t-test at level alpha detects with `power`.

    Tells whether "not significant" means "no effect" or "too few users": the standard
    approximation (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n), with sd the sample standard
    deviation of the per-user differences. It shrinks like 1 / sqrt(n).
    """
    return _mdd(float(differences_sd), n, alpha, power)


@dataclass(frozen=True)
class PairedComparison:
    """Everything `compare_paired` measured for candidate a against baseline b on the same users."""

    n: int
    mean_a: float
    mean_b: float
    difference: float
    relative: float
    ci_low: float
    ci_high: float
    confidence: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    min_detectable_relative: float
    alpha: float
    power: float

    @property
    def significant(self) -> bool:
        """Whether the paired t-test rejects equal means at level alpha (the headline decision)."""
        return bool(self.t_pvalue < self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python int/float/bool values (nan stays a float nan) plus `significant`, for JSON."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = int(value) if f.name == "n" else float(value)
        out["significant"] = self.significant
        return out


def compare_paired(
    a: ArrayLike,
    b: ArrayLike,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PairedComparison:
    """Compare candidate `a` with baseline `b`, per-user vectors of the same users in the same order.

    Runs the paired t-test, the Wilcoxon signed-rank test, the bootstrap CI of the relative
    difference and the minimum detectable relative difference (MDD / |mean(b)|). Relative values
    are nan when mean(b) is 0.
    """
    a, b = _validate_pair(a, b)
    # Check the scalar settings before the (slower) bootstrap runs.
    _check_confidence(confidence)
    n = a.shape[0]
    d = a - b
    mean_a = float(np.mean(a))
    mean_b = float(np.mean(b))
    mdd = _mdd(float(np.std(d, ddof=1)), n, alpha, power)
    t_stat, t_p = _t_test(d)
    w_stat, w_p = _wilcoxon(d)
    ci_low, ci_high = _bootstrap(a, b, resamples, confidence, seed, BOOTSTRAP_CHUNK_ELEMENTS)
    return PairedComparison(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        difference=mean_a - mean_b,
        relative=mean_a / mean_b - 1.0 if mean_b != 0 else math.nan,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=float(confidence),
        t_statistic=t_stat,
        t_pvalue=t_p,
        wilcoxon_statistic=w_stat,
        wilcoxon_pvalue=w_p,
        min_detectable_relative=mdd / abs(mean_b) if mean_b != 0 else math.nan,
        alpha=float(alpha),
        power=float(power),
    )
