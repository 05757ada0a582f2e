"""Token weighting rules of the token-weighting paper (§4.1), as `TokenLoss` objects.

Each rule computes its weights once in `prepare` from the data (never hard-coded per dataset) and
then returns a weight per target token; the loss is the shared masked token cross-entropy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from genrec_lightning.losses.base import LossContext, TokenLoss
from genrec_lightning.semantic_ids import NUM_SPECIAL_TOKENS, PAD, prefix_groups

Variant = Literal["paper", "official"]


def prefix_dispersions(codes: Tensor, embeddings: Tensor, squared: bool = True) -> Tensor:
    """mu_k for k = 0..L: the mean over items of V(G_k(item)), V = mean squared distance to the centroid.

    Items are grouped by their length-k ID prefix (k = 0: one group of all items). Since
    E_I[V(G_k(I))] = sum_G |G|/N V(G) = (1/N) sum_i ||u_i - centroid(G_k(i))||^2, each level
    needs one scatter of the embeddings into group sums. `squared=False` averages plain distances
    (the official code's variant).
    """
    if codes.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{codes.shape[0]} ID rows but {embeddings.shape[0]} item embeddings")
    x = embeddings.double()
    out = []
    for group, count in prefix_groups(codes):
        sums = torch.zeros(len(count), x.shape[1], dtype=x.dtype).index_add_(0, group, x)
        centroid = sums / count[:, None].double()
        distance2 = ((x - centroid[group]) ** 2).sum(1)
        out.append((distance2 if squared else distance2.sqrt()).mean())
    return torch.stack(out)


def front_greater_weights(codes: Tensor, embeddings: Tensor, variant: Variant = "paper") -> Tensor:
    """[L] weights w_k ∝ max(mu_{k-1} - mu_k, 0), rescaled to sum to L (the paper's eq. for w^fg).

    variant="official" reproduces the released code's formula instead: plain (not squared)
    distances and w_k ∝ log1p(max(delta_k, 0)), which flattens the weights.
    """
    if variant not in ("paper", "official"):
        raise ValueError(f"unknown Front-Greater variant {variant!r}; use 'paper' or 'official'")
    mu = prefix_dispersions(codes, embeddings, squared=variant == "paper")
    delta = (mu[:-1] - mu[1:]).clamp_min(0.0)
    if variant == "official":
        delta = torch.log1p(delta)
    if float(delta.sum()) <= 0.0:
        raise ValueError("the ID prefixes do not reduce the embeddings' dispersion at any level")
    return (delta / delta.sum() * codes.shape[1]).float()


def effective_number(n: Tensor, beta: float) -> Tensor:
    """E_n = (1 - beta^n) / (1 - beta) (Cui et al.), the information of n occurrences."""
    return (1.0 - beta ** n.double()) / (1.0 - beta)


class FrontGreater(TokenLoss):
    """Front-Greater weighting (§4.1.1): a fixed weight per ID position from prefix dispersion reduction.

    Computed at setup from the actual ID table and item embeddings (squared distances, no log).

    Args:
        variant: "paper" (the formula as written) or "official" (the released code's plain
            distances and log1p; there the gains were computed offline and pasted in per dataset).
    """

    def __init__(self, variant: Variant = "paper") -> None:
        super().__init__()
        if variant not in ("paper", "official"):
            raise ValueError(f"unknown Front-Greater variant {variant!r}; use 'paper' or 'official'")
        self.variant = variant
        self.register_buffer("position_weights", torch.ones(0), persistent=False)

    def prepare(self, context: LossContext) -> None:
        weights = front_greater_weights(context.ids.codes, context.item_embeddings(), self.variant)
        self.position_weights = weights.to(self.position_weights.device)

    def token_weights(self, labels: Tensor, items: Tensor | None = None) -> Tensor:
        if self.position_weights.numel() != labels.shape[1]:
            raise RuntimeError("FrontGreater has no weights for these IDs: call prepare() first")
        return self.position_weights.to(labels.device).expand_as(labels)


class Frequency(TokenLoss):
    """Frequency weighting (§4.1.2): 1 / E_n of each target token, rescaled per sample to sum to L.

    n counts how often each (level, code) is a *training* target (validation and test targets are
    never seen). beta = 0.99 as in the paper.

    Args:
        beta: effective-number parameter in (0, 1).
    """

    def __init__(self, beta: float = 0.99) -> None:
        super().__init__()
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.register_buffer("token_inverse_effective", torch.ones(0), persistent=False)

    def prepare(self, context: LossContext) -> None:
        ids = context.ids
        targets = context.train_targets()
        tokens = ids.tokens(targets).flatten()  # every (level, code) occurrence as a token id
        counts = torch.bincount(tokens, minlength=ids.vocab_size)[: ids.vocab_size]
        # Tokens never seen as targets never appear as labels either; n >= 1 keeps them finite.
        inverse = 1.0 / effective_number(counts.clamp_min(1), self.beta)
        inverse[:NUM_SPECIAL_TOKENS] = 0.0
        self.token_inverse_effective = inverse.float().to(self.token_inverse_effective.device)

    def token_weights(self, labels: Tensor, items: Tensor | None = None) -> Tensor:
        if self.token_inverse_effective.numel() == 0:
            raise RuntimeError("Frequency has no token counts: call prepare() first")
        raw = self.token_inverse_effective.to(labels.device)[labels]
        real = labels != PAD
        total = (raw * real).sum(1, keepdim=True).clamp_min(1e-12)
        return raw / total * real.sum(1, keepdim=True)


__all__ = ["FrontGreater", "Frequency", "effective_number", "front_greater_weights", "prefix_dispersions"]
