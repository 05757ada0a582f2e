"""Full-ranking evaluation metrics for leave-one-out recommendation (one relevant item per user).

A model returns `ranked` [B, K] item ids (best first, -1 in empty slots) and the data gives `target` [B].
Every metric state is a SUM with `dist_reduce_fx="sum"`, so results are exact under DDP: the states of
shards add up to the states of the whole evaluation set (no mean of means, no padding bias). Hit counts
and sample counts are int64; DCG sums are float64 so that long evaluations do not lose precision.
Nothing in `update` loops over samples or calls `.item()`, so no host/device sync happens per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "CoverageMetrics",
    "GroupedRankingMetrics",
    "PrefixMatchMetrics",
    "RankingMetrics",
    "UserOutcomes",
    "dcg_gain",
    "popularity_groups",
    "target_rank",
]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(sorted(set(ks)))


def _check_ranked(ranked: Tensor, target: Tensor) -> None:
    if ranked.dim() != 2 or target.dim() != 1:
        raise ValueError(
            f"expected ranked [B, K] and target [B], got {tuple(ranked.shape)} and {tuple(target.shape)}"
        )
    if ranked.shape[0] != target.shape[0]:
        raise ValueError(f"batch sizes differ: ranked has {ranked.shape[0]} rows, target {target.shape[0]}")


def _first_hit(hits: Tensor) -> Tensor:
    """Index of the first True along dim 1, or hits.shape[1] when there is none (also when K = 0)."""
    k = hits.shape[1]
    shape = [1] * hits.dim()
    shape[1] = k
    pos = torch.arange(k, device=hits.device).view(shape)
    miss = torch.full((hits.shape[0], 1, *hits.shape[2:]), k, dtype=torch.long, device=hits.device)
    return torch.cat([torch.where(hits, pos, k), miss], dim=1).amin(dim=1)


def target_rank(ranked: Tensor, target: Tensor) -> Tensor:
    """0-based position of target in each row of ranked [B, K]; K when absent (also when ranked has -1s)."""
    _check_ranked(ranked, target)
    return _first_hit((ranked == target[:, None]) & (ranked >= 0))


def dcg_gain(rank: Tensor, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """1/log2(rank+2) where rank < k else 0: the NDCG of one relevant item (its ideal DCG is 1).

    An absent target has rank K (the list length), so callers must cap k at K.
    """
    return torch.where(rank < k, 1.0 / torch.log2(rank.to(dtype) + 2), 0.0).to(dtype)


def _rank_stats(rank: Tensor, ks: tuple[int, ...], columns: int) -> tuple[Tensor, Tensor]:
    """Hits (int64) and gains (float64) of shape [*rank.shape, len(ks)]; loops only over the few ks.

    k is capped at the list length `columns`, because rank == columns means "absent".
    """
    ks = tuple(min(k, columns) for k in ks)
    hits = torch.stack([rank < k for k in ks], dim=-1).long()
    gains = torch.stack([dcg_gain(rank, k, torch.float64) for k in ks], dim=-1)
    return hits, gains


def _mean(total: Tensor, count: Tensor) -> Tensor:
    """Sum / count as float32, 0 where count is 0 (an empty metric reports zeros rather than NaN)."""
    return (total.double() / count.clamp(min=1)).float()


class _SumMetric(torchmetrics.Metric):
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def _add_sum(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> None:
        self.add_state(name, default=torch.zeros(tuple(shape), dtype=dtype), dist_reduce_fx="sum")


class RankingMetrics(_SumMetric):
    """Recall@k (= Hit@k) and NDCG@k over all samples.

    If `ranked` has fewer than k columns, recall@k and ndcg@k use all the columns there are (a shorter
    list simply cannot hit deeper), so a model that returns fewer than max(ks) items is not penalised twice.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 20), prefix: str = "") -> None:
        super().__init__()
        self.ks, self.prefix = _check_ks(ks), prefix
        self._add_sum("hits", [len(self.ks)], torch.long)
        self._add_sum("dcg", [len(self.ks)], torch.float64)
        self._add_sum("total", [], torch.long)

    def update(self, ranked: Tensor, target: Tensor) -> None:
        hits, gains = _rank_stats(target_rank(ranked, target), self.ks, ranked.shape[1])
        self.hits += hits.sum(0)
        self.dcg += gains.sum(0)
        self.total += target.shape[0]

    def compute(self) -> dict[str, Tensor]:
        recall, ndcg = _mean(self.hits, self.total), _mean(self.dcg, self.total)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"{self.prefix}recall@{k}"] = recall[i]
            out[f"{self.prefix}ndcg@{k}"] = ndcg[i]
        return out


class UserOutcomes(torchmetrics.Metric):
    """Every test sample's outcome, kept per row for paired significance tests between runs.

    States are concatenated (`dist_reduce_fx="cat"`), so under DDP `compute()` returns the rows of
    every process once (torchmetrics gathers shards of unequal length); the evaluation sampler does
    not pad, so no user appears twice. Hits and gains are computed exactly as in RankingMetrics,
    so the mean of a column equals the logged Recall/NDCG@k.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 20)) -> None:
        super().__init__()
        self.ks = _check_ks(ks)
        for name in ("users", "targets", "ranks", "hits", "gains"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, ranked: Tensor, target: Tensor, user: Tensor) -> None:
        rank = target_rank(ranked, target)
        hits, gains = _rank_stats(rank, self.ks, ranked.shape[1])
        self.users.append(user.long())
        self.targets.append(target.long())
        self.ranks.append(torch.where(rank < ranked.shape[1], rank, -1))  # -1: not in the list
        self.hits.append(hits)
        self.gains.append(gains)

    def compute(self) -> dict[str, Tensor]:
        """user, target, rank (0-based, -1 when absent) [S], and recall@k/ndcg@k [S] (float64)."""
        if isinstance(self.users, list) and not self.users:  # no test batch ran
            empty = torch.zeros(0, dtype=torch.long)
            return {"user": empty, "target": empty, "rank": empty} | {
                f"{m}@{k}": torch.zeros(0, dtype=torch.float64) for k in self.ks for m in ("recall", "ndcg")
            }
        names = ("users", "targets", "ranks", "hits", "gains")
        cat = {name: dim_zero_cat(getattr(self, name)) for name in names}  # a list, or gathered already
        out = {"user": cat["users"], "target": cat["targets"], "rank": cat["ranks"]}
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = cat["hits"][:, i].double()
            out[f"ndcg@{k}"] = cat["gains"][:, i]
        return out


def popularity_groups(
    item_frequencies: Tensor, head_fraction: float = 0.5, reference_items: Tensor | None = None
) -> Tensor:
    """Group of every item: 0 = head, 1 = tail (LongTensor [N]).

    The token-weighting paper (§5.2.5) ranks the items of the TEST set by interaction frequency and
    splits them into two equal halves. Here: rank the distinct `reference_items` (default: all items) by
    frequency, descending, ties broken by lower item id first; the first round(head_fraction * n_ref)
    (Python's round) are head. Items outside the reference set are head iff their frequency >= the
    frequency of the least frequent head item (tail if there is no head item).
    """
    freq = item_frequencies
    if freq.dim() != 1:
        raise ValueError(f"item_frequencies must be 1-D, got shape {tuple(freq.shape)}")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    n = freq.shape[0]
    if reference_items is None:
        ref = torch.arange(n, device=freq.device)
    else:
        ref = torch.unique(reference_items.flatten().to(device=freq.device, dtype=torch.long))  # sorted
        if ref.numel() and (ref[0] < 0 or ref[-1] >= n):
            raise ValueError(f"reference_items must lie in [0, {n})")
    # A stable descending sort of id-sorted items keeps the lower id first among equal frequencies.
    order = torch.sort(freq[ref], descending=True, stable=True).indices
    n_head = round(head_fraction * ref.numel())
    groups = torch.ones(n, dtype=torch.long, device=freq.device)
    if n_head == 0:
        return groups
    head = ref[order[:n_head]]
    outside = torch.ones(n, dtype=torch.bool, device=freq.device)
    outside[ref] = False
    groups[outside & (freq >= freq[head[-1]])] = 0
    groups[head] = 0
    return groups


class GroupedRankingMetrics(_SumMetric):
    """Recall/NDCG per item group of the TARGET item (e.g. head/tail)."""

    def __init__(
        self,
        item_groups: Tensor,
        group_names: Sequence[str] = ("head", "tail"),
        ks: Sequence[int] = (1, 5, 10, 20),
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.ks, self.prefix, self.group_names = _check_ks(ks), prefix, tuple(group_names)
        g = len(self.group_names)
        if item_groups.dim() != 1 or item_groups.is_floating_point():
            raise ValueError(
                f"item_groups must be an integer tensor [N], got {item_groups.dtype} {item_groups.shape}"
            )
        if g == 0 or len(set(self.group_names)) != g:
            raise ValueError(f"group_names must be non-empty and distinct, got {self.group_names!r}")
        if item_groups.numel() and (item_groups.min() < 0 or item_groups.max() >= g):
            raise ValueError(f"item_groups values must lie in [0, {g}) for groups {self.group_names!r}")
        # Non-persistent: moves with .to(device) but is configuration, not state, so not in state_dict.
        self.register_buffer("item_groups", item_groups.long().clone(), persistent=False)
        self._add_sum("hits", [g, len(self.ks)], torch.long)
        self._add_sum("dcg", [g, len(self.ks)], torch.float64)
        self._add_sum("counts", [g], torch.long)

    def update(self, ranked: Tensor, target: Tensor) -> None:
        hits, gains = _rank_stats(target_rank(ranked, target), self.ks, ranked.shape[1])
        groups = self.item_groups[target]
        self.hits.index_add_(0, groups, hits)
        self.dcg.index_add_(0, groups, gains)
        self.counts.index_add_(0, groups, torch.ones_like(groups))

    def compute(self) -> dict[str, Tensor]:
        recall, ndcg = _mean(self.hits, self.counts[:, None]), _mean(self.dcg, self.counts[:, None])
        out = {}
        for g, name in enumerate(self.group_names):
            for i, k in enumerate(self.ks):
                out[f"{self.prefix}{name}/recall@{k}"] = recall[g, i]
                out[f"{self.prefix}{name}/ndcg@{k}"] = ndcg[g, i]
            out[f"{self.prefix}{name}/count"] = self.counts[g].float()
        return out


class PrefixMatchMetrics(_SumMetric):
    """Table 6 of the token-weighting paper: a recommendation counts as a hit at level k when its first k
    codes equal the target's first k codes (k = 1..L). NDCG counts ONE hit, at the best (lowest) matching
    rank, so it never exceeds 1."""

    def __init__(self, num_levels: int, ks: Sequence[int] = (1, 5, 10, 20), prefix: str = "") -> None:
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels <= 0:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        self.num_levels, self.ks, self.prefix = num_levels, _check_ks(ks), prefix
        self._add_sum("hits", [num_levels, len(self.ks)], torch.long)
        self._add_sum("dcg", [num_levels, len(self.ks)], torch.float64)
        self._add_sum("total", [], torch.long)

    def update(self, ranked_codes: Tensor, target_codes: Tensor) -> None:
        L = self.num_levels  # noqa: N806
        if ranked_codes.dim() != 3 or target_codes.dim() != 2:
            raise ValueError(
                f"expected ranked_codes [B, K, L] and target_codes [B, L], got "
                f"{tuple(ranked_codes.shape)} and {tuple(target_codes.shape)}"
            )
        if ranked_codes.shape[2] != L or target_codes.shape[1] != L:
            raise ValueError(
                f"code length must be num_levels={L}, got {ranked_codes.shape[2]} and {target_codes.shape[1]}"
            )
        if ranked_codes.shape[0] != target_codes.shape[0]:
            raise ValueError(f"batch sizes differ: {ranked_codes.shape[0]} vs {target_codes.shape[0]}")
        valid = (ranked_codes >= 0).all(dim=-1, keepdim=True)  # empty slots (rows of -1) never match
        equal = (ranked_codes == target_codes[:, None, :]) & valid
        prefix_equal = equal.int().cummin(dim=-1).values.bool()  # [B, K, L]: first l+1 codes equal
        hits, gains = _rank_stats(_first_hit(prefix_equal), self.ks, ranked_codes.shape[1])  # [B, L, len(ks)]
        self.hits += hits.sum(0)
        self.dcg += gains.sum(0)
        self.total += target_codes.shape[0]

    def compute(self) -> dict[str, Tensor]:
        recall, ndcg = _mean(self.hits, self.total), _mean(self.dcg, self.total)
        out = {}
        for level in range(self.num_levels):
            for i, c in enumerate(self.ks):
                out[f"{self.prefix}prefix{level + 1}/recall@{c}"] = recall[level, i]
                out[f"{self.prefix}prefix{level + 1}/ndcg@{c}"] = ndcg[level, i]
        return out


class CoverageMetrics(_SumMetric):
    """Item coverage and popularity bias of the top-k lists (the paper's Figure 2: predicted vs
    ground-truth item popularity deciles).

    Items are binned by training frequency: rank all N items ascending (ties by item id), bin = rank *
    num_bins // N, so bin 0 holds the least popular items and bin num_bins-1 the most popular.
    """

    higher_is_better = None

    def __init__(self, item_frequencies: Tensor, k: int = 10, num_bins: int = 10, prefix: str = "") -> None:
        super().__init__()
        if item_frequencies.dim() != 1 or item_frequencies.numel() == 0:
            raise ValueError(
                f"item_frequencies must be a non-empty 1-D tensor, got {tuple(item_frequencies.shape)}"
            )
        for name, value in (("k", k), ("num_bins", num_bins)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.k, self.num_bins, self.prefix = k, num_bins, prefix
        n = item_frequencies.numel()
        freq = item_frequencies.double()
        rank = torch.empty(n, dtype=torch.long)
        rank[torch.sort(freq.cpu(), stable=True).indices] = torch.arange(n)
        self.register_buffer("item_frequencies", freq.clone(), persistent=False)
        self.register_buffer("item_bins", (rank * num_bins // n).to(freq.device), persistent=False)
        self._add_sum("recommended", [n], torch.long)
        self._add_sum("target_bins", [num_bins], torch.long)
        self._add_sum("predicted_bins", [num_bins], torch.long)
        self._add_sum("target_popularity", [], torch.float64)
        self._add_sum("num_lists", [], torch.long)

    def update(self, ranked: Tensor, target: Tensor) -> None:
        _check_ranked(ranked, target)
        top = ranked[:, : self.k].flatten()
        # Count -1 slots with weight 0 instead of masking them out: boolean indexing would sync the host.
        weight = (top >= 0).long()
        items = top.clamp(min=0)
        self.recommended.index_add_(0, items, weight)
        self.predicted_bins.index_add_(0, self.item_bins[items], weight)
        self.target_bins.index_add_(0, self.item_bins[target], torch.ones_like(target))
        self.target_popularity += self.item_frequencies[target].sum()
        self.num_lists += target.shape[0]

    def compute(self) -> dict[str, Tensor]:
        p = self.prefix
        slots = self.recommended.sum()
        predicted, targets = _mean(self.predicted_bins, slots), _mean(self.target_bins, self.num_lists)
        out = {f"{p}coverage@{self.k}": (self.recommended > 0).float().mean()}
        for j in range(self.num_bins):
            out[f"{p}popularity_bin{j}/predicted"] = predicted[j]
            out[f"{p}popularity_bin{j}/target"] = targets[j]
        out[f"{p}avg_popularity@{self.k}"] = _mean((self.recommended * self.item_frequencies).sum(), slots)
        out[f"{p}avg_popularity/target"] = _mean(self.target_popularity, self.num_lists)
        return out
