"""AdamW with linear warm-up and cosine decay, shared by every trainable recommender.

The schedule is a pure function of the optimiser step, so a resumed run continues on the same
curve (Lightning restores the scheduler's step count with the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier at `step`: linear warm-up to 1 over `warmup_steps`, then cosine to `min_lr_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
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
) -> dict:
    """`configure_optimizers` result: AdamW and a per-step warm-up + cosine schedule.

    `total_steps` is usually `trainer.estimated_stepping_batches`; `min_lr_ratio=1` keeps the rate
    constant after warm-up.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    total = int(total_steps) if math.isfinite(total_steps) else warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["adamw_warmup_cosine", "decay_groups", "warmup_cosine"]
