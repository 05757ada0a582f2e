"""Collision, codebook-usage and ID-drift curves of a module's hard item IDs during training.

Works with any module that has `raw_item_codes()` and `raw_codebook_sizes`, the hard IDs its
tokenizer assigns now, before dedup: the tokenizer stage and the UniGRec joint module. The UniGRec
collision-rate curves (its Figures 3 and 4) and the identifier-evolution analysis (Figure 6:
per-level code-change rate, how many levels of an item's ID changed) are read from these logs.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from genrec_lightning.semantic_ids import collision_rate, usage_entropy


def id_changes(before: Tensor, after: Tensor, prefix: str) -> dict[str, float]:
    """Per-level share of items whose code changed, and the share of items with 0..L levels changed."""
    changed = before.to(after.device) != after  # [N, L]
    out = {f"{prefix}_l{level}": float(rate) for level, rate in enumerate(changed.float().mean(dim=0))}
    counts = torch.bincount(changed.sum(dim=1), minlength=after.shape[1] + 1).float() / len(after)
    out |= {f"{prefix}_levels{k}": float(share) for k, share in enumerate(counts)}
    return out


class CollisionMonitor(L.Callback):
    """Logs collision rate, unique-ID ratio and per-level usage/entropy every N epochs or steps."""

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, prefix: str = "ids") -> None:
        """
        Args:
            every_n_epochs: log at the end of every N-th training epoch (0: never), with the
                ID drift since the previous epoch-end measurement and since the start of fit.
            every_n_steps: also log every N optimiser steps (0: never), for curves within an epoch.
            prefix: TensorBoard tag prefix (`<prefix>/collision_rate`, `<prefix>/entropy_l0`,
                `<prefix>/change_rate_l0`, `<prefix>/changed_since_start_levels1`, ...).
        """
        if every_n_epochs < 0 or every_n_steps < 0:
            raise ValueError("every_n_epochs and every_n_steps must be >= 0")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.prefix = prefix
        self._initial: Tensor | None = None
        self._previous: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        codes = getattr(pl_module, "raw_item_codes", None)
        if not callable(codes) or not hasattr(pl_module, "raw_codebook_sizes"):
            raise MisconfigurationException(
                f"CollisionMonitor needs a module with raw_item_codes() and raw_codebook_sizes (a "
                f"TokenizerModule or UniGRecModule); {type(pl_module).__name__} has neither"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._initial is None:  # a resumed run keeps the reference of its first start
            self._initial = pl_module.raw_item_codes().cpu()
            self._previous = self._initial

    def measure(self, pl_module: L.LightningModule, codes: Tensor | None = None) -> dict[str, float]:
        codes = pl_module.raw_item_codes() if codes is None else codes
        usage, entropy = usage_entropy(codes, pl_module.raw_codebook_sizes)
        rate = collision_rate(codes)
        out = {f"{self.prefix}/collision_rate": rate, f"{self.prefix}/unique_ratio": 1.0 - rate}
        for level, (used, ent) in enumerate(zip(usage, entropy, strict=True)):
            out[f"{self.prefix}/usage_l{level}"] = used
            out[f"{self.prefix}/entropy_l{level}"] = ent
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self._initial, "previous": self._previous}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial, self._previous = state_dict.get("initial"), state_dict.get("previous")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.logger:
            # Straight to the logger at this step (the loggers write on rank 0 only), so these
            # curves do not clash with the per-epoch values below.
            trainer.logger.log_metrics(self.measure(pl_module), step=trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            # Every rank holds the same weights, so the figures agree and need no reduction;
            # logged through the module so a ModelCheckpoint can monitor them.
            codes = pl_module.raw_item_codes()
            values = self.measure(pl_module, codes)
            if self._previous is not None and self._previous.shape == codes.shape:
                values |= id_changes(self._previous, codes, f"{self.prefix}/change_rate")
                values |= id_changes(self._initial, codes, f"{self.prefix}/changed_since_start")
            self._previous = codes.cpu()
            for name, value in values.items():
                pl_module.log(name, value, on_step=False, on_epoch=True)
