"""The shared masked token cross-entropy and the `TokenLoss` interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    Subclasses override `token_weights` (a weighting rule) or `forward` (several objectives).
    `forward` returns the loss and a dict of scalars to log under `train/` (e.g. objective weights).
    """

    def prepare(self, context: LossContext) -> None:
        """Compute data-dependent state (e.g. per-level weights) once, before training."""

    def token_weights(self, labels: Tensor, step: int) -> Tensor | None:
        """[B, T] weight per target token, or None for uniform weights."""
        return None

    def forward(self, logits: Tensor, labels: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        loss = token_cross_entropy(logits, labels, self.token_weights(labels, step))
        return loss, {}


class CrossEntropyTokenLoss(TokenLoss):
    """Plain next-token cross-entropy, every token weighted equally (TIGER)."""


__all__ = ["CrossEntropyTokenLoss", "LossContext", "TokenLoss", "token_cross_entropy"]
