"""Deduplication rules that turn a tokenizer's raw codes (with collisions) into unique IDs."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from genrec_lightning.semantic_ids.stats import prefix_groups

DedupMethod = Literal["suffix", "reassign_last", "none"]
DEDUP_METHODS: tuple[str, ...] = ("suffix", "reassign_last", "none")


def _rank_within_groups(group: Tensor) -> Tensor:
    """0, 1, 2, ... for the members of each group in increasing item id (a vectorised cumcount)."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group), device=group.device) - first[group[order]]
    return rank


def dedup_suffix(raw: Tensor) -> tuple[Tensor, int]:
    """Append a level numbering the items that share an ID (0, 1, ... in increasing item id).

    Returns the [N, L+1] codes and the suffix level's size (largest group). The numbering depends
    only on the grouping, so re-deriving IDs from unchanged codes gives the same suffixes.
    """
    rank = _rank_within_groups(prefix_groups(raw)[-1][0])
    return torch.cat([raw, rank.unsqueeze(1)], dim=1), int(rank.max()) + 1


def _dedup_reassign_last(raw: Tensor, last_size: int, seed: int) -> Tensor:
    """Move every non-first member of a colliding group to a free last-level code under its prefix."""
    codes = raw.numpy().copy()
    groups = prefix_groups(raw)
    prefix = groups[-2][0].numpy()  # group of the length-(L-1) prefix (all 0 for one-level IDs)
    per_prefix = np.bincount(prefix)
    if per_prefix.max() > last_size:
        worst = int(per_prefix.argmax())
        example = codes[prefix == worst][0, :-1].tolist()
        raise ValueError(
            f"dedup 'reassign_last' cannot separate the {int(per_prefix[worst])} items under prefix "
            f"{example}: the last level has only {last_size} codes; use `dedup: suffix` or a larger codebook"
        )
    movers = np.flatnonzero(_rank_within_groups(groups[-1][0]).numpy() > 0)
    if len(movers) == 0:
        return raw.clone()
    rng = np.random.default_rng(seed)
    order = np.argsort(prefix, kind="stable")
    ends = np.cumsum(per_prefix)
    movers = movers[np.argsort(prefix[movers], kind="stable")]  # grouped by prefix, item order inside
    mover_prefixes, first = np.unique(prefix[movers], return_index=True)
    for p, moving in zip(mover_prefixes, np.split(movers, first[1:]), strict=True):  # per colliding prefix
        members = order[ends[p] - per_prefix[p] : ends[p]]
        free = np.setdiff1d(np.arange(last_size), codes[members, -1])
        codes[moving, -1] = rng.choice(free, size=len(moving), replace=False)
    return torch.from_numpy(codes)


def extend_suffix(raw: Tensor, raw_new: Tensor) -> Tensor:
    """Final IDs [M, L+1] of new items appended after the items of `raw` [N, L] under `suffix`
    dedup: each gets the next number among the items sharing its raw ID. The numbering of the
    existing items is unchanged (it only counts lower item ids), so nothing already served moves."""
    codes, _ = dedup_suffix(torch.cat([raw, raw_new]))
    return codes[len(raw) :]


def extend_reassign_last(codes: Tensor, raw_new: Tensor, last_size: int, seed: int) -> Tensor:
    """Final IDs [M, L] of new items under `reassign_last` dedup against the final table `codes`:
    an item whose ID is taken moves to a free last-level code under its prefix (drawn with `seed`),
    in order, so later new items also avoid earlier ones. Raises ValueError when a prefix is full."""
    taken: dict[tuple[int, ...], set[int]] = {}
    for code in codes.tolist():
        taken.setdefault(tuple(code[:-1]), set()).add(code[-1])
    rng = np.random.default_rng(seed)
    out = raw_new.clone()
    for row, code in enumerate(raw_new.tolist()):
        prefix = tuple(code[:-1])
        used = taken.setdefault(prefix, set())
        if code[-1] in used:
            free = sorted(set(range(last_size)) - used)
            if not free:
                raise ValueError(
                    f"new item {row}: all {last_size} last-level codes under prefix {list(prefix)} are taken"
                )
            out[row, -1] = int(rng.choice(free))
        used.add(int(out[row, -1]))
    return out
