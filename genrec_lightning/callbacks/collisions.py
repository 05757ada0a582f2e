"""Collision and codebook-usage curves of a module's hard item IDs during training.

Works with any module that exposes `item_codes() -> [num_items, L]` (hard IDs before dedup) and
`codebook_sizes`: the tokenizer stage and the UniGRec joint module. The UniGRec collision-rate
curves (its Figures 3 and 4) are read from these logs.
"""

from __future__ import annotations

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from genrec_lightning.semantic_ids import collision_rate, usage_entropy


class CollisionMonitor(L.Callback):
    """Logs collision rate, unique-ID ratio and per-level usage/entropy every N epochs or steps."""

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, prefix: str = "ids") -> None:
        """
        Args:
            every_n_epochs: log at the end of every N-th training epoch (0: never).
            every_n_steps: also log every N optimiser steps (0: never), for curves within an epoch.
            prefix: TensorBoard tag prefix (`<prefix>/collision_rate`, `<prefix>/entropy_l0`, ...).
        """
        if every_n_epochs < 0 or every_n_steps < 0:
            raise ValueError("every_n_epochs and every_n_steps must be >= 0")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.prefix = prefix

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "item_codes", None)) or not hasattr(pl_module, "codebook_sizes"):
            raise MisconfigurationException(
                f"CollisionMonitor needs a module with item_codes() and codebook_sizes; "
                f"{type(pl_module).__name__} has neither"
            )

    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        codes = pl_module.item_codes()
        usage, entropy = usage_entropy(codes, pl_module.codebook_sizes)
        rate = collision_rate(codes)
        out = {f"{self.prefix}/collision_rate": rate, f"{self.prefix}/unique_ratio": 1.0 - rate}
        for level, (used, ent) in enumerate(zip(usage, entropy, strict=True)):
            out[f"{self.prefix}/usage_l{level}"] = used
            out[f"{self.prefix}/entropy_l{level}"] = ent
        return out

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
            for name, value in self.measure(pl_module).items():
                pl_module.log(name, value, on_step=False, on_epoch=True)
