"""Item -> semantic ID tables: vocabulary layout, deduplication, prefix index, statistics, save/load.

A tokenizer emits raw codes `[N, L]` (level l in [0, K_l)) for the dense items 0..N-1. Everything
downstream (datasets, T5 vocabulary, constrained beam search, token weights, collision callbacks)
reads IDs through `SemanticIds`, so the vocabulary layout and the dedup rule live in one place.

Token layout: PAD, EOS, BOS first, then one contiguous range per level, so a token id names its
level as well as its code: level l code c -> `NUM_SPECIAL_TOKENS + sum(K_0..K_{l-1}) + c`.

The module-level statistics (`collision_rate`, `usage_entropy`, `filter_ratios`, `purity_gains`) are
plain torch and device-agnostic, because a training callback calls them on raw CUDA codes every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from genrec_lightning.artifacts import META_FILE, atomic_dir, read_meta, write_json_atomic
from genrec_lightning.errors import GenRecError

PAD, EOS, BOS = 0, 1, 2
NUM_SPECIAL_TOKENS = 3
DedupMethod = Literal["suffix", "reassign_last", "none"]
DEDUP_METHODS: tuple[str, ...] = ("suffix", "reassign_last", "none")

CODES_FILE = "codes.safetensors"
FORMAT_VERSION = 1
_MAX_PACKED = 2**62
_BUILD_HINT = "build it with `genrec tokenize --config <tokenizer yaml>`"
# meta.json keys `save` derives from the table. User meta may repeat the descriptive ones (e.g. a
# datamodule's expectation names `num_items`) only with the same value, and may replace `statistics`
# (e.g. with frequency-weighted ones); `format` and `sha256` belong to the file alone.
_FILE_META = ("format", "sha256")
_TABLE_META = ("num_items", "codebook_sizes", "raw_codebook_sizes", "dedup")
_REQUIRED_META = (*_FILE_META, *_TABLE_META, "statistics")
#: Key of the safetensors header entry that records the table's description (`_TABLE_META`) inside the
#: checksummed file, so a meta.json edited afterwards is caught even where the tensors alone allow it
#: (a larger codebook size).
_HEADER_KEY = "table"
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class ArtifactMismatchError(GenRecError, ValueError):
    """A stored artifact was built from another dataset/config, or was modified after it was written."""


# --------------------------------------------------------------------------------------------------
# Plain-torch helpers (device-agnostic)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Prefix index (constrained beam search)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PrefixIndex:
    """Sorted ID table plus a per-level CSR map prefix -> allowed next codes (DESIGN.md §6).

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


# --------------------------------------------------------------------------------------------------
# Deduplication
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# SemanticIds
# --------------------------------------------------------------------------------------------------


class SemanticIds:
    """Final item -> semantic ID table with its vocabulary layout, lookups and statistics.

    `codes` [N, L'] is what the recommender sees; `raw_codes` [N, L] is the tokenizer output before
    dedup, kept because collision statistics are defined on it. Tensors live on the CPU; lookups
    called with tensors on another device use a per-device copy made once.
    """

    def __init__(
        self,
        codes: Tensor,
        codebook_sizes: Sequence[int],
        *,
        raw_codes: Tensor | None = None,
        dedup: DedupMethod = "none",
        meta: dict | None = None,
    ) -> None:
        """
        Args:
            codes: final ID table [N, L'], integer codes, level l in [0, codebook_sizes[l]).
            codebook_sizes: size of every final level.
            raw_codes: the tokenizer's table [N, L] before dedup (defaults to `codes`).
            dedup: how `codes` was derived from `raw_codes` (recorded, used for checks and meta).
            meta: free-form provenance (dataset, tokenizer config hash, ...) saved into meta.json.
        """
        if dedup not in DEDUP_METHODS:
            raise ValueError(f"dedup must be one of {DEDUP_METHODS}, got {dedup!r}")
        _check_codes_2d(codes)
        sizes = [int(s) for s in codebook_sizes]
        _check_table(codes, sizes, "codes")
        codes = codes.detach().to("cpu", torch.int64).contiguous()
        if raw_codes is None:
            raw = codes
        else:
            _check_codes_2d(raw_codes, "raw_codes")
            raw = raw_codes.detach().to("cpu", torch.int64).contiguous()
            expected_levels = len(sizes) - 1 if dedup == "suffix" else len(sizes)
            if raw.shape != (codes.shape[0], expected_levels):
                raise ValueError(
                    f"raw_codes has shape {list(raw.shape)} but dedup {dedup!r} of codes {list(codes.shape)} "
                    f"needs [{codes.shape[0]}, {expected_levels}]"
                )
            _check_table(raw, sizes[: raw.shape[1]], "raw_codes")
        self._codes = codes
        self._raw = raw
        self._sizes = sizes
        self._dedup: str = dedup
        self._meta: dict = dict(meta or {})
        self._device_cache: dict[torch.device, dict[str, Tensor]] = {}
        self._prefix_index: PrefixIndex | None = None

    @classmethod
    def from_codes(
        cls,
        raw_codes: Tensor | np.ndarray,
        codebook_size: int | Sequence[int],
        dedup: DedupMethod = "suffix",
        seed: int = 0,
        meta: dict | None = None,
    ) -> SemanticIds:
        """Deduplicate a tokenizer's raw table into final IDs.

        `suffix` appends a level numbering the items that share a raw ID (0 for the lowest item id);
        `reassign_last` moves later duplicates to a free last-level code under the same prefix
        (random, reproducible from `seed`); `none` keeps collisions.
        """
        raw = torch.as_tensor(raw_codes)
        _check_codes_2d(raw, "raw_codes")
        raw = raw.detach().to("cpu", torch.int64).contiguous()
        levels = raw.shape[1]
        if isinstance(codebook_size, (int, np.integer)):
            sizes = [int(codebook_size)] * levels
        else:
            sizes = [int(s) for s in codebook_size]
        _check_table(raw, sizes, "raw_codes")
        if dedup == "suffix":
            codes, extra = dedup_suffix(raw)
            return cls(codes, [*sizes, extra], raw_codes=raw, dedup=dedup, meta=meta)
        if dedup == "reassign_last":
            return cls(
                _dedup_reassign_last(raw, sizes[-1], seed), sizes, raw_codes=raw, dedup=dedup, meta=meta
            )
        if dedup == "none":
            return cls(raw, sizes, raw_codes=raw, dedup=dedup, meta=meta)
        raise ValueError(f"dedup must be one of {DEDUP_METHODS}, got {dedup!r}")

    # ---------------------------------------------------------------- properties

    @property
    def num_items(self) -> int:
        return self._codes.shape[0]

    @property
    def num_levels(self) -> int:
        """L', the length of a final ID (raw levels + 1 with `suffix` dedup)."""
        return self._codes.shape[1]

    @property
    def raw_num_levels(self) -> int:
        return self._raw.shape[1]

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self._sizes)

    @property
    def raw_codebook_sizes(self) -> list[int]:
        return self._sizes[: self.raw_num_levels]

    @property
    def dedup(self) -> str:
        return self._dedup

    @property
    def meta(self) -> dict:
        return self._meta

    @property
    def codes(self) -> Tensor:
        """Final IDs [N, L'] int64 (CPU; treat as read-only)."""
        return self._codes

    @property
    def raw_codes(self) -> Tensor:
        """Tokenizer IDs before dedup [N, L] int64 (CPU; treat as read-only)."""
        return self._raw

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + sum(self._sizes)

    @cached_property
    def token_offsets(self) -> Tensor:
        """[L'] first token id of each level's range."""
        sizes = torch.tensor(self._sizes, dtype=torch.int64)
        return NUM_SPECIAL_TOKENS + torch.cumsum(sizes, 0) - sizes

    @cached_property
    def token_table(self) -> Tensor:
        """[N + 1, L'] token ids per item; row N is the padding item (all PAD) so padded histories gather."""
        pad_row = torch.full((1, self.num_levels), PAD, dtype=torch.int64)
        return torch.cat([self._codes + self.token_offsets, pad_row])

    @cached_property
    def is_unique(self) -> bool:
        return collision_rate(self._codes) == 0.0

    # ---------------------------------------------------------------- lookups

    def _on(self, device: torch.device, name: str) -> Tensor:
        """Lookup table `name` on `device`, copied once (the hot path never re-uploads it)."""
        cache = self._device_cache.setdefault(torch.device(device), {})
        if name not in cache:
            if name in ("sorted_keys", "first_item"):
                index = self.prefix_index()  # full-ID level: sorted packed keys, lowest item per key
                table = index.keys[-1] if name == "sorted_keys" else index.sorted_items[index.starts[-1]]
            elif name == "sizes":
                table = torch.tensor(self._sizes, dtype=torch.int64)
            else:
                table = {"token_table": self.token_table, "offsets": self.token_offsets}[name]
            cache[name] = table.to(device)
        return cache[name]

    def tokens(self, items: Tensor) -> Tensor:
        """Item ids [...] (N = padding) -> token ids [..., L'] with one gather."""
        return self._on(items.device, "token_table")[items]

    def pack(self, codes: Tensor) -> Tensor:
        """First k levels [..., k] -> exact order-preserving mixed-radix int64 key (codes must be valid)."""
        k = codes.shape[-1]
        if k > self.num_levels:
            raise ValueError(f"cannot pack {k} levels: IDs have {self.num_levels}")
        _check_packable(self._sizes[:k])
        return _pack(codes, self._sizes)

    def items_from_codes(self, codes: Tensor) -> Tensor:
        """Final IDs [B, L'] -> item id [B], -1 when no item has that ID (lowest item id on duplicates)."""
        if codes.shape[-1] != self.num_levels:
            raise ValueError(f"expected IDs with {self.num_levels} levels, got {codes.shape[-1]}")
        valid = ((codes >= 0) & (codes < self._on(codes.device, "sizes"))).all(dim=-1)
        key = _pack(torch.where(valid.unsqueeze(-1), codes, torch.zeros_like(codes)), self._sizes)
        keys = self._on(codes.device, "sorted_keys")
        pos = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
        found = valid & (keys[pos] == key)
        return torch.where(found, self._on(codes.device, "first_item")[pos], torch.full_like(key, -1))

    def items_from_tokens(self, tokens: Tensor) -> Tensor:
        """Token ids [B, L'] -> item id [B], -1 for unknown IDs, special tokens or wrong-level tokens."""
        return self.items_from_codes(tokens.long() - self._on(tokens.device, "offsets"))

    def prefix_index(self) -> PrefixIndex:
        """The (cached) CPU prefix index of the final IDs; `.to(device)` it for GPU decoding."""
        if self._prefix_index is None:
            self._prefix_index = PrefixIndex.build(self._codes, self._sizes)
        return self._prefix_index

    # ---------------------------------------------------------------- statistics

    def statistics(self, item_frequencies: Tensor | None = None) -> dict[str, Any]:
        """JSON-ready summary: collisions (raw IDs), per-level usage, entropy, filter ratio, purity gain."""
        raw_counts = prefix_groups(self._raw)[-1][1]
        usage, entropy = usage_entropy(self._codes, self._sizes)
        normalized = [h / math.log(s) if s > 1 else 0.0 for h, s in zip(entropy, self._sizes, strict=True)]
        return {
            "num_items": self.num_items,
            "num_levels": self.num_levels,
            "codebook_sizes": self.codebook_sizes,
            "dedup": self.dedup,
            "collision_rate": collision_rate(self._raw),
            "colliding_items": int(raw_counts[raw_counts > 1].sum()),
            "max_group_size": int(raw_counts.max()),
            "unique_ratio": prefix_groups(self._codes)[-1][1].shape[0] / self.num_items,
            "usage": usage,
            "entropy": entropy,
            "normalized_entropy": normalized,
            "filter_ratio": filter_ratios(self._codes),
            "purity_gain": purity_gains(self._codes, item_frequencies),
        }

    def token_purity_gain(self, item_frequencies: Tensor | None = None) -> list[Tensor]:
        """Per level, [K_l] mean purity gain of the items using each code (NaN if unused): paper Figure 1."""
        gain = _purity_gain_per_item(self._codes, item_frequencies)
        out = []
        for level, size in enumerate(self._sizes):
            code = self._codes[:, level]
            total = torch.zeros(size, dtype=torch.float64).scatter_add_(0, code, gain[:, level])
            out.append(total / torch.bincount(code, minlength=size).double())  # 0 / 0 -> NaN for unused codes
        return out

    # ---------------------------------------------------------------- persistence

    def save(
        self,
        directory: str | Path,
        meta: dict | None = None,
        tensors: Mapping[str, dict[str, Tensor]] | None = None,
    ) -> Path:
        """Write `codes.safetensors` + `meta.json` atomically; `meta` adds to (and overrides) `self.meta`.

        User meta cannot contradict what the table says about itself, so meta.json never lies.
        `tensors` maps extra file names to state dicts written in the same atomic step (the
        tokenizer stage stores its weights next to its IDs, for UniGRec's joint stage).
        """
        user_meta = {**self._meta, **(meta or {})}
        derived = {
            "num_items": self.num_items,
            "codebook_sizes": self.codebook_sizes,
            "raw_codebook_sizes": self.raw_codebook_sizes,
            "dedup": self.dedup,
        }
        for key, value in user_meta.items():
            if key in _FILE_META:
                raise ValueError(f"meta key {key!r} is written by SemanticIds.save itself; rename it")
            if key in derived and _as_json(value) != derived[key]:
                raise ValueError(
                    f"meta {key!r} = {value!r} contradicts the ID table ({derived[key]!r}); "
                    f"the meta belongs to another table"
                )
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_file(
                {"codes": self._codes.contiguous(), "raw_codes": self._raw.contiguous()},
                str(tmp / CODES_FILE),
                metadata={_HEADER_KEY: json.dumps(derived, sort_keys=True)},
            )
            for name, state in (tensors or {}).items():
                if name in (CODES_FILE, META_FILE) or Path(name).name != name:
                    raise ValueError(f"extra artifact file {name!r} must be a plain new file name")
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / name))
            record = {
                "format": FORMAT_VERSION,
                "sha256": _sha256(tmp / CODES_FILE),
                **derived,
                "statistics": user_meta["statistics"] if "statistics" in user_meta else self.statistics(),
                **user_meta,
            }
            write_json_atomic(tmp / META_FILE, record)
        return directory

    @classmethod
    def load(cls, directory: str | Path, expect: Mapping[str, Any] | None = None) -> SemanticIds:
        """Read a saved table, checking its checksum and that meta.json matches `expect` key by key."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"semantic ID artifact {directory} does not exist; {_BUILD_HINT}")
        record = read_meta(directory)
        if record is None:
            raise FileNotFoundError(
                f"{directory / META_FILE} is missing (incomplete artifact); "
                f"delete {directory} and {_BUILD_HINT}"
            )
        path = directory / CODES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; delete {directory} and {_BUILD_HINT}")
        missing = [key for key in _REQUIRED_META if key not in record]
        if missing:
            raise ArtifactMismatchError(
                f"{directory / META_FILE} lacks {missing}; delete {directory} to rebuild"
            )
        if record.get("format") != FORMAT_VERSION:
            raise ArtifactMismatchError(
                f"{directory} has format {record.get('format')!r}, this version reads {FORMAT_VERSION}; "
                f"delete {directory} to rebuild"
            )
        for key, value in (expect or {}).items():
            wanted = _as_json(value)
            if key not in record or record[key] != wanted:
                found = record.get(key, "<missing>")
                # The artifact may be a valid one of another dataset: never advise deleting it.
                raise ArtifactMismatchError(
                    f"semantic ID artifact {directory} was built for another dataset/config: "
                    f"meta key {key!r} is {found!r}, expected {wanted!r}; point `tokenizer` at this "
                    "dataset's semantic-ID artifact, or at the tokenizer YAML (e.g. configs/rqvae.yaml), "
                    "which builds this dataset's own entry"
                )
        if _sha256(path) != record.get("sha256"):
            raise ArtifactMismatchError(f"{path} was modified or corrupted; delete {directory} to rebuild")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (a handle, not a dict)
        problem = _stored_table_problem(record, tensors, header)
        if problem is None:
            try:
                return cls(
                    tensors["codes"],
                    record["codebook_sizes"],
                    raw_codes=tensors["raw_codes"],
                    dedup=record["dedup"],
                    meta={k: v for k, v in record.items() if k not in _FILE_META},
                )
            except (ValueError, TypeError) as err:  # codes outside the stored sizes, bad dedup name
                problem = str(err).split(";")[0]
        raise ArtifactMismatchError(
            f"semantic ID artifact {directory} is corrupted or was modified after it was written "
            f"({problem}); delete {directory} and {_BUILD_HINT}"
        )

    def equal(self, other: SemanticIds) -> bool:
        """Same final and raw tables, sizes and dedup rule (meta is provenance, not identity)."""
        return (
            self._sizes == other._sizes
            and self._dedup == other._dedup
            and self._codes.shape == other._codes.shape
            and self._raw.shape == other._raw.shape
            and bool(torch.equal(self._codes, other._codes))
            and bool(torch.equal(self._raw, other._raw))
        )

    def __repr__(self) -> str:
        return (
            f"SemanticIds(num_items={self.num_items}, codebook_sizes={self._sizes}, dedup={self._dedup!r}, "
            f"unique={self.is_unique})"
        )


def _check_table(codes: Tensor, sizes: Sequence[int], name: str) -> None:
    """Every level's codes must fit its codebook; name the first offender and how to fix it."""
    if len(sizes) != codes.shape[1]:
        raise ValueError(
            f"{name} has {codes.shape[1]} levels but {len(sizes)} codebook sizes were given ({list(sizes)}); "
            f"pass one size per level"
        )
    for level, size in enumerate(sizes):
        if size < 1:
            raise ValueError(f"codebook size of level {level} must be >= 1, got {size}")
        column = codes[:, level]
        bad = (column < 0) | (column >= size)
        if bool(bad.any()):
            value = int(column[bad][0])
            fix = (
                "codes must be non-negative; fix the tokenizer output"
                if value < 0
                else f"pass a codebook size >= {value + 1} for level {level} or fix the tokenizer output"
            )
            raise ValueError(f"{name} level {level} holds code {value}, outside [0, {size}); {fix}")


def _stored_table_problem(
    record: Mapping[str, Any], tensors: Mapping[str, Tensor], header: Mapping[str, str]
) -> str | None:
    """What in meta.json contradicts the checksummed tensor file, or None when they agree.

    The checksum covers the tensors only, so meta.json is checked against them: against the table
    description written into the file's header (artifacts written since it is stored there) and
    against the tensor shapes (every artifact).
    """
    if "codes" not in tensors or "raw_codes" not in tensors:
        return f"{CODES_FILE} lacks the 'codes'/'raw_codes' tensors"
    if _HEADER_KEY in header:
        written = json.loads(header[_HEADER_KEY])
        for key in _TABLE_META:
            if record[key] != written.get(key):
                found, wrote = record[key], written.get(key)
                return f"meta.json says {key} = {found!r} but the table was written with {wrote!r}"
    codes, raw = tensors["codes"], tensors["raw_codes"]
    sizes, raw_sizes = record["codebook_sizes"], record["raw_codebook_sizes"]
    if not isinstance(sizes, list) or not isinstance(raw_sizes, list):
        return "meta.json codebook_sizes/raw_codebook_sizes are not lists"
    expected = {
        "codes": (record["num_items"], len(sizes)),
        "raw_codes": (record["num_items"], len(raw_sizes)),
    }
    for name, tensor in (("codes", codes), ("raw_codes", raw)):
        if tuple(tensor.shape) != expected[name]:
            shape, described = list(tensor.shape), list(expected[name])
            return f"meta.json describes {name} of shape {described}, the file holds {shape}"
    if raw_sizes != sizes[: len(raw_sizes)]:
        return f"meta.json raw_codebook_sizes {raw_sizes} are not the first levels of codebook_sizes {sizes}"
    return None


def _as_json(value: Any) -> Any:
    """`value` as meta.json stores it (tuples -> lists, paths -> str), for comparisons."""
    return json.loads(json.dumps(value, default=str))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
