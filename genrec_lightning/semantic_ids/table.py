"""`SemanticIds`: the final item -> semantic ID table, its checks, lookups and save/load.

A tokenizer emits raw codes `[N, L]` (level l in [0, K_l)) for the dense items 0..N-1. Everything
downstream (datasets, T5 vocabulary, constrained beam search, token weights, collision callbacks)
reads IDs through `SemanticIds`, so the vocabulary layout and the dedup rule are applied in one place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from genrec_lightning.artifacts import META_FILE, atomic_dir, read_meta, sha256_of, write_json_atomic
from genrec_lightning.semantic_ids import vocab
from genrec_lightning.semantic_ids.dedup import DEDUP_METHODS, DedupMethod, _dedup_reassign_last, dedup_suffix
from genrec_lightning.semantic_ids.io import (
    _BUILD_HINT,
    _FILE_META,
    _HEADER_KEY,
    _REQUIRED_META,
    CODES_FILE,
    FORMAT_VERSION,
    ArtifactMismatchError,
    _as_json,
    _stored_table_problem,
)
from genrec_lightning.semantic_ids.prefix_index import PrefixIndex, _check_packable, _pack
from genrec_lightning.semantic_ids.stats import (
    _check_codes_2d,
    _purity_gain_per_item,
    collision_rate,
    filter_ratios,
    prefix_groups,
    purity_gains,
    usage_entropy,
)


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
        return vocab.vocab_size(self._sizes)

    @cached_property
    def token_offsets(self) -> Tensor:
        """[L'] first token id of each level's range."""
        return vocab.token_offsets(self._sizes)

    @cached_property
    def token_table(self) -> Tensor:
        """[N + 1, L'] token ids per item; row N is the padding item (all PAD) so padded histories gather."""
        return vocab.padded_token_table(self._codes, self.token_offsets)

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
                "sha256": sha256_of(tmp / CODES_FILE),
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
                    f"meta key {key!r} is {found!r}, expected {wanted!r}; point `semantic_ids_from` at this "
                    "dataset's semantic-ID artifact, or at the tokenizer YAML (e.g. configs/rqvae.yaml), "
                    "which builds this dataset's own entry"
                )
        if sha256_of(path) != record.get("sha256"):
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
