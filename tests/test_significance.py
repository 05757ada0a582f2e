"""Paired per-user significance tests: agreement with scipy and brute force, edge cases, power."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from genrec_lightning.analysis import significance as sig
from genrec_lightning.analysis.significance import (
    PairedComparison,
    bootstrap_relative_ci,
    compare_paired,
    minimum_detectable_difference,
    paired_t_test,
    wilcoxon_signed_rank,
)


def ndcg_like(rng: np.random.Generator, n: int, seeds: int = 3, hit_rate: float = 0.3, k: int = 10):
    """Leave-one-out NDCG@k per user averaged over seeds: 0 on a miss, 1/log2(rank+2) on a hit."""
    runs = []
    for _ in range(seeds):
        hit = rng.random(n) < hit_rate
        rank = rng.integers(0, k, size=n)
        runs.append(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0))
    return np.mean(runs, axis=0)


def loo_vectors():
    """Hand-made and seeded (a, b) pairs, many with zeros and exact NDCG values."""
    rng = np.random.default_rng(7)
    single_seed_a = np.where(rng.random(200) < 0.25, 1.0 / np.log2(rng.integers(0, 10, 200) + 2.0), 0.0)
    single_seed_b = np.where(rng.random(200) < 0.2, 1.0 / np.log2(rng.integers(0, 10, 200) + 2.0), 0.0)
    return [
        ([0.0, 1.0, 0.5, 0.0, 1 / math.log2(3)], [0.0, 0.5, 0.5, 1 / math.log2(4), 0.0]),
        ([1.0, 2.0, 3.0, 4.0], [1.5, 1.0, 3.5, 2.0]),
        (single_seed_a, single_seed_b),
        (ndcg_like(rng, 943), ndcg_like(rng, 943)),
        (ndcg_like(rng, 50, hit_rate=0.6), ndcg_like(rng, 50, hit_rate=0.4)),
    ]


# --- paired t-test --------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", loo_vectors())
def test_t_test_matches_scipy_ttest_rel(a, b):
    t, p = paired_t_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert t == pytest.approx(float(ref.statistic), rel=1e-10)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-10)
    # Direction: t > 0 when a is better on average.
    assert np.sign(t) == np.sign(np.mean(np.asarray(a) - np.asarray(b)))


def test_t_test_constant_differences():
    assert paired_t_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == (0.0, 1.0)
    t, p = paired_t_test([0.2, 0.3, 0.4], [0.1, 0.2, 0.3])  # d = 0.1 up to rounding: not all equal
    assert p < 1e-10 and t > 0
    assert paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == (math.inf, 0.0)
    assert paired_t_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == (-math.inf, 0.0)


# --- Wilcoxon -------------------------------------------------------------------------------


def brute_force_wilcoxon_p(d: np.ndarray) -> float:
    """Exact two-sided p: share of the 2^n sign assignments with min(W+, W-) <= the observed one."""
    ranks = stats.rankdata(np.abs(d))
    total = ranks.sum()
    w_plus = ranks[d > 0].sum()
    observed = min(w_plus, total - w_plus)
    hits = 0
    for signs in itertools.product((0, 1), repeat=len(d)):
        wp = float(np.dot(signs, ranks))
        hits += min(wp, total - wp) <= observed
    return hits / 2 ** len(d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilcoxon_exact_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    b = rng.random(9)
    a = b + rng.normal(0.15, 0.3, size=9)  # continuous: no ties, no zero differences
    d = a - b
    assert len(np.unique(np.abs(d))) == 9 and np.all(d != 0)
    stat, p = wilcoxon_signed_rank(a, b)
    ranks = stats.rankdata(np.abs(d))
    assert stat == min(ranks[d > 0].sum(), ranks[d < 0].sum())
    assert p == pytest.approx(brute_force_wilcoxon_p(d), rel=1e-12)


def test_wilcoxon_tied_case_matches_scipy_and_textbook_formula():
    rng = np.random.default_rng(3)
    b = ndcg_like(rng, 400, seeds=1)
    a = b.copy()
    improved = rng.choice(400, size=60, replace=False)
    a[improved] = ndcg_like(rng, 60, seeds=1, hit_rate=0.6)
    d = a - b
    assert np.count_nonzero(d == 0) > 100  # many zero differences and many ties
    stat, p = wilcoxon_signed_rank(a, b)
    ref = stats.wilcoxon(a, b, zero_method="wilcox")
    assert stat == float(ref.statistic)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-12)
    # Independent check: normal approximation on the non-zero differences with tie correction.
    nz = d[d != 0]
    m = len(nz)
    ranks = stats.rankdata(np.abs(nz))
    _, ties = np.unique(np.abs(nz), return_counts=True)
    var = (m * (m + 1) * (2 * m + 1) - np.sum(ties**3 - ties) / 2) / 24
    z = (ranks[nz > 0].sum() - m * (m + 1) / 4) / math.sqrt(var)
    assert p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)


def test_wilcoxon_all_zero_differences():
    assert wilcoxon_signed_rank([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]) == (0.0, 1.0)


# --- bootstrap ------------------------------------------------------------------------------


def brute_force_bootstrap(a, b, resamples, confidence, seed):
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        if b[idx].mean() != 0:
            ratios.append(a[idx].mean() / b[idx].mean() - 1.0)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


@pytest.mark.parametrize("n, chunk_elements", [(37, 37 * 7 + 3), (943, 943 * 64), (50, 10)])
def test_bootstrap_chunked_equals_loop(n, chunk_elements):
    rng = np.random.default_rng(11)
    b = ndcg_like(rng, n)
    a = ndcg_like(rng, n, hit_rate=0.35)
    resamples, confidence, seed = 601, 0.9, 5
    got = bootstrap_relative_ci(a, b, resamples, confidence, seed, chunk_elements=chunk_elements)
    assert got == brute_force_bootstrap(a, b, resamples, confidence, seed)  # exactly
    # The chunk size does not change the result either.
    assert got == bootstrap_relative_ci(a, b, resamples, confidence, seed)


def test_bootstrap_drops_replicates_with_zero_baseline_mean():
    a = [0.1, 0.3, 0.0, 0.2, 0.5]
    b = [0.0, 0.0, 0.0, 0.0, 0.4]  # a resample misses user 4 with probability (4/5)^5 = 0.33
    got = bootstrap_relative_ci(a, b, 300, seed=2, chunk_elements=20)
    assert got == brute_force_bootstrap(a, b, 300, 0.95, 2)
    assert all(math.isfinite(x) for x in got)


def test_bootstrap_undefined_relative_difference():
    assert all(math.isnan(x) for x in bootstrap_relative_ci([0.1, 0.2], [0.0, 0.0], 50))
    # mean(b) != 0 but every replicate misses the only non-zero baseline user.
    seed = next(s for s in range(100) if 2 not in np.random.default_rng(s).integers(0, 3, size=3))
    assert all(math.isnan(x) for x in bootstrap_relative_ci([1.0, 1.0, 1.0], [0.0, 0.0, 1.0], 1, seed=seed))
    assert not any(math.isnan(x) for x in bootstrap_relative_ci([1.0, 1.0, 1.0], [0.0, 0.0, 1.0], 1, seed=0))


def test_bootstrap_seed_determinism():
    rng = np.random.default_rng(4)
    a, b = ndcg_like(rng, 300), ndcg_like(rng, 300)
    first = bootstrap_relative_ci(a, b, 500, seed=1)
    assert first == bootstrap_relative_ci(a, b, 500, seed=1)
    assert first != bootstrap_relative_ci(a, b, 500, seed=2)
    assert first[0] < first[1]


def test_bootstrap_wider_at_higher_confidence():
    rng = np.random.default_rng(4)
    a, b = ndcg_like(rng, 300), ndcg_like(rng, 300)
    lo90, hi90 = bootstrap_relative_ci(a, b, 500, confidence=0.9)
    lo99, hi99 = bootstrap_relative_ci(a, b, 500, confidence=0.99)
    assert lo99 < lo90 < hi90 < hi99


# --- whole comparisons ----------------------------------------------------------------------


def test_identical_runs_are_not_different():
    b = ndcg_like(np.random.default_rng(0), 943)
    result = compare_paired(b, b.copy(), resamples=500)
    assert result.t_pvalue == 1.0 and result.t_statistic == 0.0
    assert result.wilcoxon_pvalue == 1.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.difference == 0.0 and result.relative == 0.0
    assert not result.significant


def planted(seed: int = 0, n: int = 943, improved_users: int = 120):
    rng = np.random.default_rng(seed)
    b = ndcg_like(rng, n)
    a = b.copy()
    users = rng.choice(n, size=improved_users, replace=False)
    a[users] += rng.uniform(0.05, 0.3, size=improved_users)
    return a, b, users


def test_planted_improvement_is_detected():
    a, b, _ = planted()
    result = compare_paired(a, b, resamples=2000)
    true_relative = a.mean() / b.mean() - 1.0
    assert result.relative == pytest.approx(true_relative, rel=1e-12)
    assert result.t_pvalue < 0.05 and result.wilcoxon_pvalue < 0.05
    assert result.significant
    assert 0.0 < result.ci_low < true_relative < result.ci_high
    assert result.t_statistic > 0


def test_symmetric_noise_is_not_flagged():
    _, b, users = planted()
    size = len(users)
    # Same number of perturbed users and magnitudes as the planted case, but random signs.
    rng = np.random.default_rng(123)
    a = b.copy()
    a[users] += rng.choice([-1.0, 1.0], size=size) * rng.uniform(0.05, 0.3, size=size)
    result = compare_paired(a, b, resamples=2000)
    assert result.t_pvalue > 0.05 and result.wilcoxon_pvalue > 0.05
    assert not result.significant
    assert result.ci_low < 0.0 < result.ci_high
    # Not systematically flagged: over many null draws both tests reject at about the 5 % level.
    t_rejections = w_rejections = 0
    draws = 200
    for seed in range(draws):
        rng = np.random.default_rng(1000 + seed)
        a = b.copy()
        a[users] += rng.choice([-1.0, 1.0], size=size) * rng.uniform(0.05, 0.3, size=size)
        t_rejections += paired_t_test(a, b)[1] < 0.05
        w_rejections += wilcoxon_signed_rank(a, b)[1] < 0.05
    assert t_rejections / draws <= 0.1
    assert w_rejections / draws <= 0.1


# --- minimum detectable difference ----------------------------------------------------------


def t_test_power(delta: float, sd: float, n: int, alpha: float) -> float:
    """Exact power of the two-sided paired t-test from the noncentral t distribution."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta * math.sqrt(n) / sd
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


@pytest.mark.parametrize("sd, n", [(0.2, 943), (0.05, 100), (1.0, 30)])
def test_minimum_detectable_difference_has_requested_power(sd, n):
    mdd = minimum_detectable_difference(sd, n)
    assert t_test_power(mdd, sd, n, 0.05) == pytest.approx(0.8, abs=0.01)
    assert t_test_power(mdd, sd, n, 0.05) > t_test_power(0.8 * mdd, sd, n, 0.05) + 0.1
    high_power = minimum_detectable_difference(sd, n, alpha=0.01, power=0.9)
    assert t_test_power(high_power, sd, n, 0.01) == pytest.approx(0.9, abs=0.01)


def test_minimum_detectable_difference_scaling():
    base = minimum_detectable_difference(0.3, 1000)
    assert minimum_detectable_difference(0.3, 4000) == pytest.approx(base / 2, rel=1e-3)
    assert minimum_detectable_difference(0.6, 1000) == pytest.approx(2 * base, rel=1e-12)
    assert minimum_detectable_difference(0.0, 1000) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"differences_sd": 0.1, "n": 1}, "n must be"),
        ({"differences_sd": -0.1, "n": 10}, "differences_sd"),
        ({"differences_sd": 0.1, "n": 10, "alpha": 0.0}, "alpha"),
        ({"differences_sd": 0.1, "n": 10, "power": 1.0}, "power"),
    ],
)
def test_minimum_detectable_difference_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        minimum_detectable_difference(**kwargs)


# --- validation and output ------------------------------------------------------------------


@pytest.mark.parametrize("func", [paired_t_test, wilcoxon_signed_rank, bootstrap_relative_ci, compare_paired])
@pytest.mark.parametrize(
    "a, b, message",
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2], "length mismatch"),
        ([0.1], [0.2], "at least 2 users"),
        ([0.1, np.nan, 0.3], [0.1, 0.2, 0.3], "non-finite"),
        ([0.1, 0.2], [0.1, np.inf], "non-finite"),
        ([[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.3, 0.4]], "1-D"),
    ],
)
def test_validation_errors(func, a, b, message):
    with pytest.raises(ValueError, match=message) as info:
        func(a, b)
    assert "\n" not in str(info.value)


def test_bootstrap_argument_validation():
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_relative_ci([0.1, 0.2], [0.2, 0.1], resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        compare_paired([0.1, 0.2], [0.2, 0.1], confidence=1.5)


def test_to_dict_is_json_and_matches_fields():
    a, b, _ = planted()
    result = compare_paired(list(a), list(b), resamples=300)
    data = result.to_dict()
    restored = json.loads(json.dumps(data))
    assert restored == data
    assert data["significant"] is True and result.significant
    assert type(data["n"]) is int and data["n"] == 943
    for name in PairedComparison.__dataclass_fields__:
        assert data[name] == getattr(result, name)
        assert type(data[name]) in (int, float)
    # nan survives as a float nan (json.dumps default settings write NaN).
    zero = compare_paired([0.1, 0.2, 0.0], [0.0, 0.0, 0.0], resamples=10).to_dict()
    assert math.isnan(zero["relative"]) and math.isnan(zero["ci_low"])
    assert math.isnan(zero["min_detectable_relative"])
    assert math.isnan(json.loads(json.dumps(zero))["relative"])


def test_compare_paired_uses_module_chunk_constant(monkeypatch):
    rng = np.random.default_rng(9)
    a, b = ndcg_like(rng, 101), ndcg_like(rng, 101)
    default = compare_paired(a, b, resamples=400, seed=3)
    monkeypatch.setattr(sig, "BOOTSTRAP_CHUNK_ELEMENTS", 101 * 3)
    small_chunks = compare_paired(a, b, resamples=400, seed=3)
    assert small_chunks == default
    assert (default.ci_low, default.ci_high) == brute_force_bootstrap(a, b, 400, 0.95, 3)
    assert default.min_detectable_relative == pytest.approx(
        minimum_detectable_difference(np.std(a - b, ddof=1), 101) / b.mean(), rel=1e-12
    )
