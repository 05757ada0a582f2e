"""`ItemIdTable`: the semantic IDs a generative model decodes, as a component it owns.

The table is a buffer, so a checkpoint carries the IDs it was trained with. Its policy says what a
checkpoint's table must be: `fixed` (TIGER and the token-weighting models: the IDs come from the
data, and a checkpoint trained on other IDs is refused) or `follows the tokenizer` (UniGRec: the
model derives its IDs from its own tokenizer, so a checkpoint's table is simply the state it
saved). Models choose a table instead of overriding each other's checkpoint checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from genrec_lightning.semantic_ids import (
    ArtifactMismatchError,
    PrefixIndex,
    code_tokens,
    padded_token_table,
    token_offsets,
)


class ItemIdTable(nn.Module):
    """[N, L] item IDs (-1 until attached), their token layout, and per-device prefix indexes."""

    def __init__(self, num_items: int, codebook_sizes: Sequence[int], fixed: bool = True) -> None:
        """
        Args:
            num_items: catalogue size N.
            codebook_sizes: codes per ID level (the last may be a dedup suffix level).
            fixed: a checkpoint's table must equal the attached one (False: the model's own
                tokenizer rewrites the table, so a checkpoint's table is taken as saved).
        """
        super().__init__()
        self.codebook_sizes = [int(s) for s in codebook_sizes]
        self.fixed = fixed
        self.register_buffer("codes", torch.full((num_items, len(self.codebook_sizes)), -1, dtype=torch.long))
        self.register_buffer("token_offsets", token_offsets(self.codebook_sizes), persistent=False)
        # Whether the table holds real IDs, tracked on the host so steps never sync to check it.
        self._has_ids = False
        self._indexes: dict[torch.device, PrefixIndex] = {}
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh())

    def refresh(self) -> None:
        """Re-read the table after it changed in place (a loaded state dict)."""
        self._has_ids = bool((self.codes >= 0).all())
        self._indexes.clear()

    @property
    def has_ids(self) -> bool:
        return self._has_ids

    def fits(self, codes: Tensor) -> bool:
        """Whether `codes` has this table's shape and every code is inside its level's codebook."""
        if tuple(codes.shape) != tuple(self.codes.shape):
            return False
        sizes = torch.tensor(self.codebook_sizes, device=codes.device)
        return bool(((codes >= 0) & (codes < sizes)).all())

    def store(self, codes: Tensor) -> None:
        """Replace the table (the caller checked `fits`)."""
        self.codes.copy_(codes.to(self.codes.device))
        self.refresh()

    def table(self) -> Tensor:
        """The attached IDs [N, L]."""
        if not self._has_ids:
            raise RuntimeError("no semantic IDs attached: call set_semantic_ids() or run with a datamodule")
        return self.codes

    def tokens(self, items: Tensor) -> Tensor:
        """Token ids [B, L] of items [B] (the decoder's targets)."""
        return code_tokens(self.table()[items], self.token_offsets)

    def history_tokens(self) -> Tensor:
        """Token table [N + 1, L] whose last row is padding (gathered by history item ids)."""
        return padded_token_table(self.codes, self.token_offsets)

    def prefix_index(self, device: torch.device) -> PrefixIndex:
        """Prefix index of the table on `device` (constrained beam search), built once per device."""
        if device not in self._indexes:
            self._indexes[device] = PrefixIndex.build(self.table().cpu(), self.codebook_sizes).to(device)
        return self._indexes[device]

    def check_saved(self, saved: Tensor | None) -> None:
        """Refuse a checkpoint's table that differs from a fixed, attached one: the model would
        decode other items than it was trained on."""
        if saved is None or not self.fixed or not self._has_ids:
            return
        if saved.shape != self.codes.shape or not torch.equal(saved.cpu(), self.codes.cpu()):
            changed = "shape" if saved.shape != self.codes.shape else "codes"
            raise ArtifactMismatchError(
                f"the checkpoint's semantic-ID table differs from the datamodule's ({changed}: "
                f"{tuple(saved.shape)} vs {tuple(self.codes.shape)}); the model would decode "
                "other items. Use the tokenizer config/artifact the checkpoint was trained with"
            )


#: State-dict key of the table inside a model (`item_ids.codes`) and the key before the component.
STATE_KEY = "item_ids.codes"
LEGACY_STATE_KEY = "item_id_table"


def saved_table(state_dict: dict[str, Tensor], prefix: str = "") -> Tensor | None:
    """The ID table in a model's state dict, under its current or its former key."""
    for key in (STATE_KEY, LEGACY_STATE_KEY):
        if prefix + key in state_dict:
            return state_dict[prefix + key]
    return None


def rename_legacy_table(_module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook (`register_load_state_dict_pre_hook`): checkpoints written before
    the component keep loading."""
    if prefix + LEGACY_STATE_KEY in state_dict:
        state_dict[prefix + STATE_KEY] = state_dict.pop(prefix + LEGACY_STATE_KEY)


__all__ = ["LEGACY_STATE_KEY", "STATE_KEY", "ItemIdTable", "rename_legacy_table", "saved_table"]
