"""Prefix index of an ID table for constrained beam search, and its mixed-radix prefix keys."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_MAX_PACKED = 2**62


def _check_packable(sizes: Sequence[int]) -> None:
    """Mixed-radix keys live in int64; refuse tables whose key space would not fit exactly."""
    total = math.prod(int(s) for s in sizes)
    if total >= _MAX_PACKED:
        raise ValueError(
            f"codebook sizes {list(sizes)} span {total} IDs, too many to pack into an int64 key "
            f"(limit 2**62); use fewer levels or smaller codebooks"
        )


def _pack(codes: Tensor, sizes: Sequence[int]) -> Tensor:
    """Horner mixed-radix key of `codes[..., :k]` (k = codes.shape[-1]); k = 0 gives key 0."""
    key = torch.zeros(codes.shape[:-1], dtype=torch.int64, device=codes.device)
    for level in range(codes.shape[-1]):
        key = key * int(sizes[level]) + codes[..., level].long()
    return key


@dataclass(frozen=True, eq=False)
class PrefixIndex:
    """Sorted ID table plus a per-level CSR map prefix -> allowed next codes (docs/design.md §7).

    Sorting the table makes every prefix's items a contiguous range of `sorted_items`, so decoding
    masks and candidate ranges come from `searchsorted` over packed prefix keys, with no trie.
    `keys`, `starts`, `ends` hold k = 0..L' (k = L' addresses full IDs); `ptr` and `next_codes` hold
    k = 0..L'-1 (a full ID has no continuation).
    """

    codebook_sizes: tuple[int, ...]
    sorted_items: Tensor
    sorted_codes: Tensor
    keys: tuple[Tensor, ...]
    ptr: tuple[Tensor, ...]
    next_codes: tuple[Tensor, ...]
    starts: tuple[Tensor, ...]
    ends: tuple[Tensor, ...]

    @classmethod
    def build(cls, codes: Tensor, codebook_sizes: Sequence[int]) -> PrefixIndex:
        """Index of the final ID table `codes` [N, L'] (ties between duplicate IDs keep item order)."""
        sizes = tuple(int(s) for s in codebook_sizes)
        _check_packable(sizes)
        order = torch.argsort(_pack(codes, sizes), stable=True)
        sorted_codes = codes[order]
        keys, starts, ends, group_of_row = [], [], [], []
        for k in range(len(sizes) + 1):
            key_k, counts = torch.unique_consecutive(_pack(sorted_codes[:, :k], sizes), return_counts=True)
            end = torch.cumsum(counts, 0)
            keys.append(key_k)
            starts.append(end - counts)
            ends.append(end)
            group_of_row.append(
                torch.repeat_interleave(torch.arange(len(key_k), device=codes.device), counts)
            )
        ptr, next_codes = [], []
        for k in range(len(sizes)):
            first_rows = starts[k + 1]  # one row per distinct length-(k+1) prefix, in sorted order
            parents = group_of_row[k][first_rows]
            children = torch.bincount(parents, minlength=len(keys[k]))
            ptr.append(torch.cat([children.new_zeros(1), torch.cumsum(children, 0)]))
            next_codes.append(sorted_codes[first_rows, k].contiguous())
        return cls(sizes, order, sorted_codes, *(tuple(x) for x in (keys, ptr, next_codes, starts, ends)))

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def to(self, device: torch.device | str) -> PrefixIndex:
        """Copy onto `device` so decoding on a GPU never moves tensors back to the host."""

        def move(xs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(x.to(device) for x in xs)

        return PrefixIndex(
            self.codebook_sizes,
            self.sorted_items.to(device),
            self.sorted_codes.to(device),
            move(self.keys),
            move(self.ptr),
            move(self.next_codes),
            move(self.starts),
            move(self.ends),
        )

    def _lookup(self, prefixes: Tensor) -> tuple[Tensor, Tensor]:
        """Row of each prefix in `keys[k]` (clamped) and whether it exists; k = prefixes.shape[-1]."""
        k = prefixes.shape[-1]
        if k > self.num_levels:
            raise ValueError(f"prefixes have {k} levels but IDs have only {self.num_levels}")
        in_range = torch.ones(prefixes.shape[:-1], dtype=torch.bool, device=prefixes.device)
        for level in range(k):
            in_range &= (prefixes[..., level] >= 0) & (prefixes[..., level] < self.codebook_sizes[level])
        key = _pack(prefixes.clamp_min(0), self.codebook_sizes)
        keys = self.keys[k]
        pos = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
        return pos, in_range & (keys[pos] == key)

    def allowed(self, level: int, prefixes: Tensor) -> Tensor:
        """[B, K_level] mask of the level-`level` codes that extend each prefix [B, level] to a real ID.

        Gathers a fixed window of K_level CSR entries per row, so it runs without a host sync;
        an unknown prefix gets an all-False row.
        """
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}), got {level}")
        if prefixes.shape[-1] != level:
            raise ValueError(
                f"prefixes for level {level} must have {level} columns, got {prefixes.shape[-1]}"
            )
        size = self.codebook_sizes[level]
        pos, found = self._lookup(prefixes)
        ptr, nxt = self.ptr[level], self.next_codes[level]
        begin = ptr[pos]
        length = torch.where(found, ptr[pos + 1] - begin, torch.zeros_like(begin))
        window = torch.arange(size, device=prefixes.device)
        idx = (begin.unsqueeze(-1) + window).clamp_max(len(nxt) - 1)
        cols = torch.where(window < length.unsqueeze(-1), nxt[idx], size)  # column `size` is a sink
        mask = torch.zeros(*prefixes.shape[:-1], size + 1, dtype=torch.bool, device=prefixes.device)
        mask.scatter_(-1, cols, True)
        return mask[..., :size]

    def item_range(self, prefixes: Tensor) -> tuple[Tensor, Tensor]:
        """[start, end) of each prefix [B, k] in `sorted_items`; an unknown prefix gives (0, 0)."""
        k = prefixes.shape[-1]
        pos, found = self._lookup(prefixes)
        zero = torch.zeros_like(pos)
        return torch.where(found, self.starts[k][pos], zero), torch.where(found, self.ends[k][pos], zero)
