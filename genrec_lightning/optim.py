"""AdamW with linear warm-up and a cosine (recommenders) or linear (UniGRec stage 1) decay.

The schedule is a pure function of the optimiser step, so a resumed run continues on the same
curve (Lightning restores the scheduler's step count with the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

Decay = Literal["cosine", "linear", "constant"]


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, decay: Decay = "cosine"
) -> float:
    """LR multiplier at `step`: linear warm-up to 1 over `warmup_steps`, then `decay` (cosine or
    linear) to `min_lr_ratio` at `total_steps`, or 1 throughout for `constant`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps or decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if decay == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if decay != "cosine":
        raise ValueError(f"unknown decay {decay!r}; use cosine, linear or constant")
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups with weight decay on matrices only (biases, norms and scalars are not decayed)."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_warmup_cosine(
    groups: Iterable[dict] | Iterable[nn.Parameter],
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    decay: Decay = "cosine",
) -> dict:
    """`configure_optimizers` result: AdamW and a per-step warm-up + decay schedule.

    `total_steps` is usually `trainer.estimated_stepping_batches`; `min_lr_ratio=1` (or `decay=
    "constant"`) keeps the rate constant after warm-up.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    warmup_cosine(0, 0, 1, min_lr_ratio, decay)  # an unknown decay fails here, not at the first step
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    total = int(total_steps) if math.isfinite(total_steps) else warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total, min_lr_ratio, decay)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["adamw_warmup_cosine", "decay_groups", "warmup_cosine"]
