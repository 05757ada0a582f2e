"""Statistics of a code table: collisions, codebook usage, filter ratios, purity gains.

Plain torch and device-agnostic, because a training callback calls them on raw CUDA codes every
epoch. They take any integer table (raw or deduplicated), not only a `SemanticIds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_codes_2d(codes: Tensor, name: str = "codes") -> None:
    if not isinstance(codes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise ValueError(
            f"{name} must be a non-empty [num_items, num_levels] table, got shape {list(codes.shape)}"
        )
    if codes.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must hold integer codes, got dtype {codes.dtype}; cast with .long()")


def prefix_groups(codes: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Dense group id and group sizes of every item's length-k prefix, for k = 0..L.

    Group ids at level k are built from (group at k-1, code k), so keys stay below N * (max code + 1)
    and no mixed-radix overflow is possible, whatever the codes are.
    """
    _check_codes_2d(codes)
    n, levels = codes.shape
    low, high = torch.aminmax(codes)
    if int(low) < 0:
        raise ValueError(f"codes must be non-negative, found {int(low)}")
    radix = int(high) + 1
    group = torch.zeros(n, dtype=torch.int64, device=codes.device)
    out = [(group, torch.tensor([n], device=codes.device))]
    for level in range(levels):
        _, group, counts = torch.unique(
            group * radix + codes[:, level].long(), return_inverse=True, return_counts=True
        )
        out.append((group, counts))
    return out


def _group_sizes_per_item(codes: Tensor) -> list[Tensor]:
    """|G_k(i)| for every item i and k = 0..L (float64)."""
    return [counts[group].double() for group, counts in prefix_groups(codes)]


def _check_frequencies(item_frequencies: Tensor | None, n: int, device: torch.device) -> Tensor:
    if item_frequencies is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    f = torch.as_tensor(item_frequencies, device=device).double()
    if f.shape != (n,):
        raise ValueError(f"item_frequencies must have shape [{n}] (one per item), got {list(f.shape)}")
    if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
        raise ValueError("item_frequencies must be finite and non-negative (e.g. training-split counts)")
    return f


def _purity_per_item(group: Tensor, counts: Tensor, f: Tensor, f_log_f: Tensor) -> Tensor:
    """Purity 1 - H/log|G| of every item's group; singletons are 1, groups with zero mass are 0.

    H = log F - (sum f log f) / F with F = sum f over the group, which is the entropy of the
    normalised frequencies without materialising them.
    """
    num_groups = counts.shape[0]
    mass = torch.zeros(num_groups, dtype=torch.float64, device=f.device).scatter_add_(0, group, f)
    xlogx = torch.zeros(num_groups, dtype=torch.float64, device=f.device).scatter_add_(0, group, f_log_f)
    size = counts.double()
    safe_mass = mass.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = torch.log(safe_mass) - xlogx / safe_mass
    purity = 1.0 - entropy / torch.log(size.clamp_min(2.0))
    purity = torch.where(mass > 0, purity, torch.zeros_like(purity))
    purity = torch.where(size == 1, torch.ones_like(purity), purity)
    return purity[group]


def _purity_gain_per_item(codes: Tensor, item_frequencies: Tensor | None) -> Tensor:
    """[N, L] gain of item i's purity when its level-k code is appended to its prefix."""
    f = _check_frequencies(item_frequencies, codes.shape[0], codes.device)
    f_log_f = torch.xlogy(f, f)
    purity = [_purity_per_item(g, c, f, f_log_f) for g, c in prefix_groups(codes)]
    return torch.stack([purity[k] - purity[k - 1] for k in range(1, len(purity))], dim=1)


def collision_rate(codes: Tensor) -> float:
    """1 - (#unique rows) / N, UniGRec's collision rate of a (raw, un-deduplicated) code table."""
    unique_rows = prefix_groups(codes)[-1][1].shape[0]
    return 1.0 - unique_rows / codes.shape[0]


def usage_entropy(codes: Tensor, codebook_sizes: Sequence[int]) -> tuple[list[float], list[float]]:
    """Per level: fraction of the codebook used by >= 1 item, and entropy (nats) of code usage.

    Low usage / entropy is the codebook-collapse signal the training callbacks watch.
    """
    _check_codes_2d(codes)
    if len(codebook_sizes) != codes.shape[1]:
        raise ValueError(f"got {len(codebook_sizes)} codebook sizes for {codes.shape[1]} levels")
    usage, entropy = [], []
    for level, size in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level].long(), minlength=int(size)).double()
        p = counts / counts.sum()
        usage.append(float((counts > 0).sum()) / int(size))
        entropy.append(float(-torch.xlogy(p, p).sum()))
    return usage, entropy


def filter_ratios(codes: Tensor) -> list[float]:
    """Per level k: mean over items of 1 - |G_k(i)| / |G_{k-1}(i)| (token-weighting paper, Table 1).

    The share of the remaining candidates that the k-th token rules out, averaged over items.
    """
    sizes = _group_sizes_per_item(codes)
    return [float((1.0 - sizes[k] / sizes[k - 1]).mean()) for k in range(1, len(sizes))]


def purity_gains(codes: Tensor, item_frequencies: Tensor | None = None) -> list[float]:
    """Per level: mean over items of the prefix-purity gain of that level's token (paper, Figure 1)."""
    return _purity_gain_per_item(codes, item_frequencies).mean(dim=0).tolist()
