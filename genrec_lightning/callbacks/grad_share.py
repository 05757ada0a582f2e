"""Which loss term drives training: each weighted term's share of the gradient on shared parameters.

A joint objective such as UniGRec's eq. 22 adds terms whose raw values say little about their pull
on the model (a KL at a small temperature can be thousands while its gradient is small, or the
reverse). `GradientShares` differentiates every weighted term separately with respect to the
shared parameters (the T5 network by default) every N optimiser steps and logs

    train/grad_norm/<term>   ||d(weight * term) / d theta||
    train/grad_share/<term>  that norm / the sum of the norms over the terms (the shares sum to 1)

The module names its terms in `weighted_loss_terms` (a dict of scalar tensors still attached to the
graph, already multiplied by their weights) during `training_step`. The extra gradients are taken
with `torch.autograd.grad`, which leaves `.grad` and the DDP reducer untouched; each process logs
its own batch's figures (rank 0 writes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn


def gradient_norms(terms: Mapping[str, Tensor], parameters: Iterable[nn.Parameter]) -> dict[str, float]:
    """L2 norm over `parameters` of the gradient of each scalar term (0 for a term that does not
    reach them); the graph is kept for the training step's own backward."""
    params = [p for p in parameters if p.requires_grad]
    norms: dict[str, float] = {}
    for name, term in terms.items():
        if not (isinstance(term, Tensor) and term.requires_grad):
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def gradient_shares(norms: Mapping[str, float]) -> dict[str, float]:
    """Each norm / their sum; all zeros when no term reaches the parameters."""
    total = sum(norms.values())
    return {name: (value / total if total > 0 else 0.0) for name, value in norms.items()}


class GradientShares(L.Callback):
    """Logs `train/grad_norm/<term>` and `train/grad_share/<term>` every N optimiser steps."""

    def __init__(self, every_n_steps: int = 50, module: str = "network") -> None:
        """
        Args:
            every_n_steps: measure on the optimiser steps divisible by this (each measurement
                costs one extra backward pass per term).
            module: attribute of the LightningModule holding the shared parameters (the T5).
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.module = module

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, self.module, None), nn.Module):
            raise MisconfigurationException(
                f"GradientShares: {type(pl_module).__name__} has no submodule `{self.module}`; "
                "set the callback's `module` to the attribute holding the shared parameters"
            )
        if not hasattr(pl_module, "weighted_loss_terms"):
            raise MisconfigurationException(
                f"GradientShares needs a module that names its weighted loss terms in "
                f"`weighted_loss_terms`; {type(pl_module).__name__} does not"
            )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if trainer.global_step % self.every_n_steps or trainer.logger is None:
            return
        terms = getattr(pl_module, "weighted_loss_terms", None) or {}
        if not terms:
            return
        norms = gradient_norms(terms, getattr(pl_module, self.module).parameters())
        metrics = {f"train/grad_norm/{name}": value for name, value in norms.items()}
        metrics |= {f"train/grad_share/{name}": value for name, value in gradient_shares(norms).items()}
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


__all__ = ["GradientShares", "gradient_norms", "gradient_shares"]
