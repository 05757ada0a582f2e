"""The shared masked token cross-entropy and the `TokenLoss` interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from genrec_lightning.semantic_ids import PAD, SemanticIds


def token_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of per-token cross-entropy over non-PAD labels.

    logits [B, T, V], labels [B, T] (PAD = ignored), weights [B, T] or None (uniform). With
    uniform weights this equals `F.cross_entropy(..., ignore_index=PAD)`; with weights it is
    sum(w * ce) / (number of real tokens), so weights that average 1 keep the loss scale.
    """
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=PAD, reduction="none")
    mask = (labels.flatten() != PAD).to(ce.dtype)
    if weights is not None:
        ce = ce * weights.flatten().to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class LossContext:
    """What a token loss may use at setup: the ID table, and the datamodule for the rest.

    Embeddings and frequencies are read only when a rule asks for them, so plain cross-entropy
    never builds item embeddings.
    """

    ids: SemanticIds
    data: Any | None = None

    def _data(self, what: str) -> Any:
        if self.data is None:
            raise ValueError(f"this token loss needs {what}: run it with a SequenceDataModule")
        return self.data

    def item_embeddings(self) -> Tensor:
        """[N, d] item text embeddings of the dataset."""
        return self._data("item embeddings").item_embeddings()

    def train_targets(self) -> Tensor:
        """[S] target item of every training sample (the sliding windows; no validation/test item)."""
        return self._data("the training targets").split("train").target_items

    def item_frequencies(self) -> Tensor:
        """[N] interactions per item in the training part only."""
        return self._data("training item frequencies").item_frequencies()


class TokenLoss(nn.Module):
    """A training objective over the decoder's token logits.

    A weighting rule overrides `token_weights` (and `logit_scale` for a temperature); objectives
    that combine several rules or need another forward pass override `forward`. `forward` returns
    the loss and a dict of scalars for the `ObjectiveWeights` callback (objective weights, terms).

    Schedules read `self.step` (the optimiser step, `trainer.global_step`) and `self.total_steps`
    (the run's length), which the `CurriculumScheduler` callback sets before every training batch;
    classes that read them set `uses_step = True` so the recommender adds that callback itself.
    """

    #: Whether the loss reads `step`/`total_steps` (then a `CurriculumScheduler` must drive it).
    uses_step: bool = False
    #: Whether `forward` needs `counterfactual_logits` (the decoder's logits with an empty history).
    needs_counterfactual: ClassVar[bool] = False
    step: int = 0
    total_steps: int | None = None

    def prepare(self, context: LossContext) -> None:
        """Compute data-dependent state (e.g. per-level weights) once, before training."""

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        """Set the optimiser step (and run length) on this loss and every token loss inside it."""
        for module in self.modules():
            if isinstance(module, TokenLoss):
                module.step = int(step)
                module.total_steps = total_steps

    def schedule_note(self, total_steps: int | None) -> str | None:
        """A line for the console on how this loss's schedule resolves for a run of `total_steps`
        planned optimiser steps (None: nothing to say); may raise on a schedule the run cannot drive."""
        return None

    @property
    def logit_scale(self) -> float:
        """Factor on the logits before the softmax (1 / temperature); 1 for plain weighting rules."""
        return 1.0

    def token_weights(self, labels: Tensor, items: Tensor | None = None) -> Tensor | None:
        """[B, T] weight per target token of target `items` [B], or None for uniform weights."""
        return None

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        items: Tensor | None = None,
        counterfactual_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        scale = self.logit_scale
        scaled = logits if scale == 1.0 else logits * scale
        return token_cross_entropy(scaled, labels, self.token_weights(labels, items)), {}


class CrossEntropyTokenLoss(TokenLoss):
    """Plain next-token cross-entropy, every token weighted equally (TIGER)."""


__all__ = ["CrossEntropyTokenLoss", "LossContext", "TokenLoss", "token_cross_entropy"]
