"""Callbacks for token-loss schedules: the step they read, and TensorBoard curves of their weights.

`CurriculumScheduler` hands every `TokenLoss` the optimiser step (`trainer.global_step`, which
counts optimiser steps only, is restored on resume and does not move during validation) and the
run length before each training batch, so a curriculum is a pure function of the step and a
resumed run continues exactly where it stopped. `ObjectiveWeights` writes the loss's reported
scalars (every lambda, alpha, per-objective loss, the curriculum factor: the paper's Figure 5)
every N optimiser steps, averaged over DDP ranks, and prints the final weights when training ends.
`GenerativeRecommender` adds either callback itself when its loss needs it and the trainer has
none, so a config cannot forget them.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from genrec_lightning.losses.base import TokenLoss


def token_losses(module: torch.nn.Module) -> list[TokenLoss]:
    return [m for m in module.modules() if isinstance(m, TokenLoss)]


class CurriculumScheduler(L.Callback):
    """Sets `step` = `trainer.global_step` and `total_steps` on every token loss of the model."""

    def __init__(self) -> None:
        self._total: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self._total = int(total) if math.isfinite(total) else None
        for loss in token_losses(pl_module):
            note = loss.schedule_note(self._total)  # raises here, not mid-run, on a bad schedule
            if note:
                rank_zero_info(note)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for loss in token_losses(pl_module):
            loss.set_step(trainer.global_step, self._total)


class ObjectiveWeights(L.Callback):
    """Logs `pl_module.loss_terms` (the scalars the loss reported) every `every_n_steps` optimiser steps.

    Tags are the loss's own names, e.g. `objectives/alpha_fr`, `objectives/lambda_or`,
    `objectives/loss_fg`, `curriculum/factor`, written at the step the values were computed for.

    Args:
        every_n_steps: logging interval in optimiser steps (step 0 is always written).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        terms: dict[str, torch.Tensor] = getattr(pl_module, "loss_terms", None) or {}
        step = trainer.global_step - 1  # the step these terms were computed at (now taken)
        if not terms or step < 0 or step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        names = sorted(terms)
        values = torch.stack([terms[n].detach().float().reshape(()).to(pl_module.device) for n in names])
        values = trainer.strategy.reduce(values, reduce_op="mean")  # every rank takes the same steps
        metrics = dict(zip(names, values.tolist(), strict=True))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the objective weights of the last step (alpha'_j, the curriculum factor)."""
        terms: dict[str, torch.Tensor] = getattr(pl_module, "loss_terms", None) or {}
        shown = {n: float(v) for n, v in sorted(terms.items()) if "/alpha_" in n or n == "curriculum/factor"}
        if shown:
            parts = ", ".join(f"{n.split('/')[-1]} {v:.3f}" for n, v in shown.items())
            rank_zero_info(f"objective weights after step {trainer.global_step}: {parts}")


__all__ = ["CurriculumScheduler", "ObjectiveWeights", "token_losses"]
