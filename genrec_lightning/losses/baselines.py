"""Token-level baselines of the token-weighting paper (Table 3), on the same T5 backbone.

- `Position` (Pos): earlier ID tokens weigh more, linearly down to `last` at the final token.
- `IGD`: a token's information gain about the target item under the training-split item prior;
  tokens that gain nothing are down-weighted.
- `Rank`: the ranking-guided loss of LETTER, cross-entropy on logits / temperature.
- `CFT`: counterfactual fine-tuning, cross-entropy plus a term on the logits' change when the
  history is removed, so predictions must come from the behaviour sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genrec_lightning.losses.base import LossContext, TokenLoss, token_cross_entropy
from genrec_lightning.semantic_ids import PAD, prefix_groups


class Position(TokenLoss):
    """Pos: w_k falls linearly from 1 at the first ID token to `last` at the final one.

    Args:
        last: weight of the final token relative to the first (0.5 as in the paper's baseline).
        normalize: rescale the weights to sum to the ID length, like Front-Greater, so the loss
            scale matches plain cross-entropy.
    """

    def __init__(self, last: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        if last < 0:
            raise ValueError(f"last must be >= 0, got {last}")
        self.last = last
        self.normalize = normalize

    def position_weights(self, length: int) -> Tensor:
        if length == 1:
            return torch.ones(1)
        weights = 1.0 - (1.0 - self.last) * torch.arange(length, dtype=torch.float32) / (length - 1)
        return weights / weights.sum() * length if self.normalize else weights

    def token_weights(self, labels: Tensor, items: Tensor | None = None) -> Tensor:
        return self.position_weights(labels.shape[1]).to(labels.device).expand_as(labels)


def prefix_entropies(codes: Tensor, prior: Tensor) -> Tensor:
    """[N, L + 1] entropy (nats) of the item prior restricted to each item's length-k ID prefix group.

    Column 0 is the whole catalogue; a group with no prior mass has entropy 0. The entropy of
    p(i | G) = c_i / C_G is log C_G - sum_{i in G} c_i log c_i / C_G, so one scatter per level.
    """
    if prior.shape != codes.shape[:1]:
        raise ValueError(f"prior has shape {tuple(prior.shape)}, expected ({codes.shape[0]},)")
    c = prior.double()
    c_log_c = torch.where(c > 0, c * c.clamp_min(1e-300).log(), torch.zeros_like(c))
    columns = []
    for group, count in prefix_groups(codes):
        mass = torch.zeros(len(count), dtype=c.dtype).index_add_(0, group, c)
        plogp = torch.zeros(len(count), dtype=c.dtype).index_add_(0, group, c_log_c)
        entropy = torch.where(mass > 0, mass.clamp_min(1e-300).log() - plogp / mass.clamp_min(1e-300), 0.0)
        columns.append(entropy.clamp_min(0.0)[group])
    return torch.stack(columns, dim=1)


def information_gains(codes: Tensor, prior: Tensor) -> Tensor:
    """[N, L] IG of each ID token: entropy of the item prior before the token minus after it."""
    entropy = prefix_entropies(codes, prior)
    return entropy[:, :-1] - entropy[:, 1:]


class IGD(TokenLoss):
    """IGD: weight 1 for tokens with positive information gain, `zero_gain_weight` for the rest.

    The item prior counts each item's occurrences as a *training* target (the sliding-window
    samples); validation and test targets never enter it (the official code counts whole
    sequences, test items included). A token gains nothing when its prefix already pins the item
    down under that prior (e.g. the collision-resolving last token). The weights are rescaled to
    average 1 over the batch's tokens, i.e. the loss is sum(w * ce) / sum(w) as in IGD.

    Args:
        zero_gain_weight: weight of tokens whose gain is <= `tolerance` nats (0.1 as in IGD).
        tolerance: gains up to this many nats count as zero (float round-off).
    """

    def __init__(self, zero_gain_weight: float = 0.1, tolerance: float = 1e-9) -> None:
        super().__init__()
        if zero_gain_weight < 0:
            raise ValueError(f"zero_gain_weight must be >= 0, got {zero_gain_weight}")
        self.zero_gain_weight = zero_gain_weight
        self.tolerance = tolerance
        self.register_buffer("item_token_weights", torch.ones(0, 0), persistent=False)

    def prepare(self, context: LossContext) -> None:
        codes = context.ids.codes
        prior = torch.bincount(context.train_targets(), minlength=codes.shape[0])[: codes.shape[0]]
        gains = information_gains(codes, prior)
        weights = torch.where(gains > self.tolerance, 1.0, self.zero_gain_weight).float()
        self.item_token_weights = weights.to(self.item_token_weights.device)

    def token_weights(self, labels: Tensor, items: Tensor | None = None) -> Tensor:
        if self.item_token_weights.numel() == 0:
            raise RuntimeError("IGD has no item prior: call prepare() first")
        if items is None:
            raise ValueError("IGD weights depend on the target item: pass `items` to the loss")
        weights = self.item_token_weights.to(labels.device)[items]
        real = labels != PAD
        return weights / (weights * real).sum().clamp_min(1e-12) * real.sum()


class Rank(TokenLoss):
    """Ranking-guided loss (LETTER): cross-entropy on logits / temperature, in training only.

    A temperature below 1 sharpens the softmax, so hard negatives (close competitors of the target
    token) receive more of the gradient. Beam search ranks with the unscaled logits.

    Args:
        temperature: softmax temperature (> 0); 0.6 is the token-weighting code's default
            (its run scripts pass 1.0, which makes Rank plain cross-entropy).
    """

    def __init__(self, temperature: float = 0.6) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @property
    def logit_scale(self) -> float:
        return 1.0 / self.temperature


class CFT(TokenLoss):
    """Counterfactual fine-tuning: weighted CE + `weight` x weighted CE of (logits - counterfactual logits).

    The counterfactual logits come from the same decoder with the history removed (the encoder
    sees only EOS, plus the user token when the model has one); the recommender computes them
    when a loss sets `needs_counterfactual`. Their difference is the effect of the behaviour
    sequence on each token, and training it to predict the target makes predictions rely on the
    history rather than on popularity alone. Gradients flow through both passes. Both terms use
    CFT's position weighting (earlier tokens first, down to `position_last`).

    Args:
        weight: weight of the counterfactual term (0.1 as in the paper's baseline).
        position_last: last-token weight of the `Position` weighting of both terms; None for
            uniform weights.
    """

    needs_counterfactual = True

    def __init__(self, weight: float = 0.1, position_last: float | None = 0.5) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight
        self.weighting = Position(position_last) if position_last is not None else None

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        items: Tensor | None = None,
        counterfactual_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if counterfactual_logits is None:
            raise ValueError("CFT needs the logits of an empty-history pass (`counterfactual_logits`)")
        weights = self.weighting.token_weights(labels, items) if self.weighting is not None else None
        ce = token_cross_entropy(logits, labels, weights)
        effect = token_cross_entropy(logits - counterfactual_logits, labels, weights)
        terms = {"objectives/loss_ce": ce.detach(), "objectives/loss_cft": effect.detach()}
        return ce + self.weight * effect, terms


__all__ = ["CFT", "IGD", "Position", "Rank", "information_gains", "prefix_entropies"]
