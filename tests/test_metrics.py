"""Ranking, grouped, prefix-match and coverage metrics against brute-force Python references."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from genrec_lightning.metrics import (
    CoverageMetrics,
    GroupedRankingMetrics,
    PrefixMatchMetrics,
    RankingMetrics,
    dcg_gain,
    popularity_groups,
    target_rank,
)

KS = (1, 3, 5, 20)


# ---------------------------------------------------------------- brute-force references (plain loops)


def ref_ranking(ranked: list[list[int]], target: list[int], ks=KS, prefix: str = "") -> dict[str, float]:
    out = {}
    for k in ks:
        rec = ndcg = 0.0
        for row, t in zip(ranked, target, strict=True):
            for pos, item in enumerate(row[:k]):
                if item != -1 and item == t:
                    rec += 1
                    ndcg += 1 / math.log2(pos + 2)
                    break
        n = max(len(target), 1)
        out[f"{prefix}recall@{k}"], out[f"{prefix}ndcg@{k}"] = rec / n, ndcg / n
    return out


def ref_prefix(ranked_codes: list, target_codes: list, num_levels: int, ks=KS) -> dict[str, float]:
    out = {}
    for level in range(1, num_levels + 1):
        for c in ks:
            rec = ndcg = 0.0
            for rows, t in zip(ranked_codes, target_codes, strict=True):
                for pos, codes in enumerate(rows[:c]):
                    if all(x >= 0 for x in codes) and list(codes[:level]) == list(t[:level]):
                        rec += 1
                        ndcg += 1 / math.log2(pos + 2)
                        break
            out[f"prefix{level}/recall@{c}"] = rec / len(target_codes)
            out[f"prefix{level}/ndcg@{c}"] = ndcg / len(target_codes)
    return out


def ref_popularity_groups(freq: list[float], head_fraction: float, ref: list[int] | None) -> list[int]:
    ref = sorted(set(range(len(freq)) if ref is None else ref))
    ordered = sorted(ref, key=lambda i: (-freq[i], i))
    head = ordered[: round(head_fraction * len(ref))]
    groups = []
    for i in range(len(freq)):
        if i in ref:
            groups.append(0 if i in head else 1)
        else:
            groups.append(0 if head and freq[i] >= min(freq[h] for h in head) else 1)
    return groups


def ref_coverage(freq: list[float], ranked: list[list[int]], target: list[int], k: int, bins: int) -> dict:
    n = len(freq)
    by_pop = sorted(range(n), key=lambda i: (freq[i], i))
    bin_of = {item: r * bins // n for r, item in enumerate(by_pop)}
    recommended = [item for row in ranked for item in row[:k] if item != -1]
    out = {f"coverage@{k}": len(set(recommended)) / n}
    for j in range(bins):
        out[f"popularity_bin{j}/predicted"] = sum(bin_of[i] == j for i in recommended) / max(
            len(recommended), 1
        )
        out[f"popularity_bin{j}/target"] = sum(bin_of[i] == j for i in target) / max(len(target), 1)
    out[f"avg_popularity@{k}"] = sum(freq[i] for i in recommended) / max(len(recommended), 1)
    out["avg_popularity/target"] = sum(freq[i] for i in target) / max(len(target), 1)
    return out


def assert_matches(got: dict[str, torch.Tensor], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dim() == 0 and got[key].is_floating_point(), key
        assert got[key].item() == pytest.approx(value, abs=1e-6), key


# ---------------------------------------------------------------- data


HAND_RANKED = [
    [4, 2, 7, 1, 9],  # target at position 0
    [4, 2, 7, 1, 9],  # target at last position
    [3, 5, -1, -1, -1],  # target absent, -1 slots
    [8, 6, 0, -1, -1],  # target before -1 slots
    [-1, -1, -1, -1, -1],  # empty list
    [0, 1, 2, 3, 4],  # target absent
]
HAND_TARGET = [4, 9, 7, 0, 1, 5]


def random_case(seed: int, users: int = 50, k: int = 20, n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ranked = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(users)])
    short = torch.randint(0, k + 1, (users,), generator=g)  # some models return fewer than k items
    ranked[torch.arange(k)[None, :] >= short[:, None]] = -1
    return ranked, torch.randint(0, n, (users,), generator=g)


def compute_quiet(metric) -> dict[str, torch.Tensor]:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns when compute() precedes update()
        return metric.compute()


# ---------------------------------------------------------------- ranking


def test_target_rank_and_dcg_gain() -> None:
    rank = target_rank(torch.tensor(HAND_RANKED), torch.tensor(HAND_TARGET))
    assert rank.tolist() == [0, 4, 5, 2, 5, 5]
    assert target_rank(torch.tensor([[-1, -1]]), torch.tensor([-1])).tolist() == [2]  # -1 never matches
    assert (
        target_rank(torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, dtype=torch.long)).tolist() == [0] * 3
    )
    gain = dcg_gain(torch.tensor([0, 1, 2, 5]), k=3)
    assert gain.tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.5, 0.0])


def test_ranking_hand_made() -> None:
    metric = RankingMetrics(ks=KS, prefix="test/")
    metric.update(torch.tensor(HAND_RANKED), torch.tensor(HAND_TARGET))
    assert_matches(metric.compute(), ref_ranking(HAND_RANKED, HAND_TARGET, prefix="test/"))
    # Hand-checkable: hits at positions 0 (user 0), 2 (user 3) and 4 (user 1) out of 6 users.
    assert metric.compute()["test/recall@1"].item() == pytest.approx(1 / 6)
    assert metric.compute()["test/recall@5"].item() == pytest.approx(3 / 6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_random_in_batches(seed: int) -> None:
    ranked, target = random_case(seed)
    metric = RankingMetrics(ks=KS)
    for chunk in range(0, len(target), 16):  # batching must not change the result
        metric.update(ranked[chunk : chunk + 16], target[chunk : chunk + 16])
    assert_matches(metric.compute(), ref_ranking(ranked.tolist(), target.tolist()))


def test_fewer_columns_than_k_uses_all_columns() -> None:
    ranked, target = torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 5])
    metric = RankingMetrics(ks=(1, 10))
    metric.update(ranked, target)
    out = metric.compute()
    assert out["recall@10"].item() == pytest.approx(0.5)
    assert out["ndcg@10"].item() == pytest.approx(0.5 / math.log2(3))


# ---------------------------------------------------------------- prefix match


def test_prefix_match_against_reference_and_ndcg_at_most_one() -> None:
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 2, (40, 12, 3), generator=g)  # tiny codebooks: many entries share prefixes
    codes[:, 9:] = -1
    target = torch.randint(0, 2, (40, 3), generator=g)
    metric = PrefixMatchMetrics(num_levels=3, ks=(1, 5, 12))
    metric.update(codes, target)
    out = metric.compute()
    assert_matches(out, ref_prefix(codes.tolist(), target.tolist(), 3, ks=(1, 5, 12)))
    all_match = PrefixMatchMetrics(num_levels=3, ks=(20,))
    all_match.update(target[:, None, :].expand(-1, 20, -1), target)  # every entry matches every level
    assert all(v.item() == pytest.approx(1.0) for v in all_match.compute().values())
    assert all(v.item() <= 1 + 1e-6 for v in out.values())


def test_prefix_full_level_equals_ranking_on_unique_ids() -> None:
    ranked, target = random_case(4)
    item_codes = torch.stack(
        torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(2), indexing="ij"), -1
    )
    item_codes = item_codes.reshape(-1, 3)[torch.randperm(32, generator=torch.Generator().manual_seed(0))][
        :30
    ]
    ranked_codes = torch.where(ranked[..., None] >= 0, item_codes[ranked.clamp(min=0)], -1)
    prefix, ranking = PrefixMatchMetrics(num_levels=3, ks=KS), RankingMetrics(ks=KS)
    prefix.update(ranked_codes, item_codes[target])
    ranking.update(ranked, target)
    got, want = prefix.compute(), ranking.compute()
    for k in KS:
        for name in ("recall", "ndcg"):
            assert got[f"prefix3/{name}@{k}"].item() == pytest.approx(want[f"{name}@{k}"].item())


# ---------------------------------------------------------------- grouped


def test_grouped_equals_ranking_on_each_subset() -> None:
    ranked, target = random_case(5)
    item_groups = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))
    names = ("head", "torso", "tail")
    metric = GroupedRankingMetrics(item_groups, group_names=names, ks=KS, prefix="val/")
    metric.update(ranked, target)
    out = metric.compute()
    assert len(out) == 3 * (2 * len(KS) + 1)
    for g, name in enumerate(names):
        rows = [i for i, t in enumerate(target.tolist()) if item_groups[t] == g]
        assert out[f"val/{name}/count"].item() == len(rows)
        subset = RankingMetrics(ks=KS)
        subset.update(ranked[rows], target[rows])
        want = ref_ranking([ranked[i].tolist() for i in rows], [target[i].item() for i in rows])
        for key, value in subset.compute().items():
            assert out[f"val/{name}/{key}"].item() == pytest.approx(value.item())
            assert out[f"val/{name}/{key}"].item() == pytest.approx(want[key])


# ---------------------------------------------------------------- popularity groups


def test_popularity_groups_split_ties_and_outside_items() -> None:
    freq = torch.tensor([5.0, 9.0, 5.0, 1.0, 7.0, 5.0, 0.0, 6.0])
    ref = torch.tensor([0, 1, 2, 3, 2])  # duplicates count once: 4 distinct items, 2 head
    # ranked: 1 (9), 0 (5), 2 (5, tie -> higher id later), 3 (1); head = {1, 0}, threshold 5
    assert popularity_groups(freq, reference_items=ref).tolist() == [0, 0, 1, 1, 0, 0, 1, 0]
    assert popularity_groups(freq).tolist() == [0, 0, 1, 1, 0, 1, 1, 0]  # all 8 items: head = 1, 4, 7, 0
    assert popularity_groups(freq, head_fraction=0.0).tolist() == [1] * 8
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        freq = torch.randint(0, 6, (25,), generator=g).float()
        ref = torch.randint(0, 25, (15,), generator=g)
        for fraction in (0.5, 0.3, 1.0):
            want = ref_popularity_groups(freq.tolist(), fraction, ref.tolist())
            assert popularity_groups(freq, fraction, ref).tolist() == want


# ---------------------------------------------------------------- coverage


def test_coverage_against_reference() -> None:
    g = torch.Generator().manual_seed(6)
    freq = torch.randint(0, 8, (30,), generator=g).float()  # many ties, broken by item id
    ranked, target = random_case(7)
    metric = CoverageMetrics(freq, k=5, num_bins=4, prefix="c/")
    metric.update(ranked, target)
    out = metric.compute()
    want = ref_coverage(freq.tolist(), ranked.tolist(), target.tolist(), k=5, bins=4)
    assert_matches(out, {f"c/{key}": value for key, value in want.items()})
    for kind in ("predicted", "target"):
        assert sum(out[f"c/popularity_bin{j}/{kind}"].item() for j in range(4)) == pytest.approx(1.0)
    assert CoverageMetrics(torch.arange(20.0)).item_bins.tolist() == [i // 2 for i in range(20)]


# ---------------------------------------------------------------- sharding, empty state, reuse, bad input


def make_all() -> list[tuple[object, callable]]:
    """(metric, batch -> update args) for every metric class, fed from the same ranked/target data."""
    item_codes = torch.randint(0, 3, (30, 2), generator=torch.Generator().manual_seed(8))
    freq = torch.arange(30.0) % 7
    return [
        (RankingMetrics(ks=KS), lambda r, t: (r, t)),
        (GroupedRankingMetrics(popularity_groups(freq), ks=KS), lambda r, t: (r, t)),
        (
            PrefixMatchMetrics(2, ks=KS),
            lambda r, t: (torch.where(r[..., None] >= 0, item_codes[r], -1), item_codes[t]),
        ),
        (CoverageMetrics(freq, k=10), lambda r, t: (r, t)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_two_shards_merge_to_the_whole(index: int) -> None:
    ranked, target = random_case(9, users=51)
    (whole, args), (a, _), (b, _) = make_all()[index], make_all()[index], make_all()[index]
    whole.update(*args(ranked, target))
    a.update(*args(ranked[:20], target[:20]))
    b.update(*args(ranked[20:], target[20:]))
    assert all(fx is not None and fx.__name__ == "dim_zero_sum" for fx in a._reductions.values())
    manual = {name: getattr(a, name) + getattr(b, name) for name in a._defaults}  # what DDP's sum sync does
    a.merge_state(b)
    for name, value in manual.items():
        assert torch.equal(getattr(a, name), value)
    got, want = a.compute(), whole.compute()
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), abs=1e-6), key


@pytest.mark.parametrize("index", range(4))
def test_empty_compute_is_zero_and_reset_reuse(index: int) -> None:
    metric, args = make_all()[index]
    metric = metric.to("cpu")
    empty = compute_quiet(metric)
    assert all(v.item() == 0 and not torch.isnan(v) for v in empty.values())
    ranked, target = random_case(10)
    metric.update(*args(ranked, target))
    first = metric.compute()
    metric.reset()
    assert all(v.item() == 0 for v in compute_quiet(metric).values())
    metric.update(*args(ranked, target))
    assert all(torch.equal(first[k], v) for k, v in metric.compute().items())


def test_buffers_move_and_stay_out_of_state_dict() -> None:
    grouped = GroupedRankingMetrics(torch.tensor([0, 1, 1])).to("cpu")
    coverage = CoverageMetrics(torch.tensor([3.0, 1.0, 2.0]), k=2, num_bins=3).to(torch.device("cpu"))
    assert "item_groups" in dict(grouped.named_buffers()) and "item_groups" not in grouped.state_dict()
    assert {"item_bins", "item_frequencies"} <= set(dict(coverage.named_buffers()))
    assert not {"item_bins", "item_frequencies"} & set(coverage.state_dict())
    assert coverage.item_bins.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: RankingMetrics(ks=()), "ks must be"),
        (lambda: RankingMetrics(ks=(0, 5)), "ks must be"),
        (lambda: RankingMetrics(ks=(2.5,)), "ks must be"),
        (
            lambda: RankingMetrics().update(torch.zeros(4, dtype=torch.long), torch.zeros(4)),
            r"ranked \[B, K\]",
        ),
        (lambda: RankingMetrics().update(torch.zeros(4, 3, dtype=torch.long), torch.zeros(5)), "batch sizes"),
        (lambda: target_rank(torch.zeros(2, 3, 1), torch.zeros(2)), r"ranked \[B, K\]"),
        (lambda: GroupedRankingMetrics(torch.tensor([0, 2])), "item_groups values"),
        (lambda: GroupedRankingMetrics(torch.tensor([0, 1]), ks=[]), "ks must be"),
        (lambda: PrefixMatchMetrics(0), "num_levels"),
        (lambda: PrefixMatchMetrics(2).update(torch.zeros(2, 5, 3), torch.zeros(2, 3)), "num_levels=2"),
        (lambda: PrefixMatchMetrics(2).update(torch.zeros(2, 5), torch.zeros(2, 2)), r"\[B, K, L\]"),
        (lambda: PrefixMatchMetrics(2).update(torch.zeros(2, 5, 2), torch.zeros(3, 2)), "batch sizes"),
        (lambda: CoverageMetrics(torch.zeros(3), k=0), "k must be"),
        (lambda: CoverageMetrics(torch.zeros(3, 2)), "1-D"),
        (lambda: popularity_groups(torch.zeros(3), head_fraction=1.5), "head_fraction"),
        (lambda: popularity_groups(torch.zeros(3), reference_items=torch.tensor([3])), "reference_items"),
    ],
)
def test_bad_input_raises(build, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        build()
