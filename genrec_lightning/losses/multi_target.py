"""Multi-target learning with curriculum (token-weighting paper §4.2).

Objectives j (default: Front-Greater `fg`, Frequency `fr`, plain cross-entropy `or`) each have a
learnable positive lambda_j. The curriculum multiplies the decaying objectives' lambdas by
exp(-c t) and the rising ones' (`fr`) by 1 - exp(-c t), with t the optimiser step
(`trainer.global_step`, restored on resume), then normalises: alpha'_j = lambda'_j / sum_k lambda'_k.
The objective is sum_j alpha'_j L_j (default), or the paper's literal form where alpha'_j scales
the logits inside each objective's softmax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec_lightning.losses.base import CrossEntropyTokenLoss, LossContext, TokenLoss, token_cross_entropy
from genrec_lightning.losses.weighting import Frequency, FrontGreater


class MultiTargetCurriculum(TokenLoss):
    """Learnable objective weights with an exp(-c t) curriculum.

    Args:
        objectives: name -> token loss; default {"fg": FrontGreater(), "fr": Frequency(), "or": plain CE}.
        rising: objectives whose weight grows as 1 - exp(-c t); all others decay as exp(-c t).
        decay: the curriculum rate c (per optimiser step); 2e-5 as in the paper.
        curriculum: False keeps the learnable weights without any schedule (Table 4 "Multi-Target").
        scale_logits: the paper's literal form (logits scaled by alpha'_j before each softmax)
            instead of weighting the losses.
    """

    def __init__(
        self,
        objectives: Mapping[str, TokenLoss] | None = None,
        rising: Sequence[str] = ("fr",),
        decay: float = 2e-5,
        curriculum: bool = True,
        scale_logits: bool = False,
    ) -> None:
        super().__init__()
        if objectives is None:
            objectives = {"fg": FrontGreater(), "fr": Frequency(), "or": CrossEntropyTokenLoss()}
        if not objectives:
            raise ValueError("MultiTargetCurriculum needs at least one objective")
        unknown = set(rising) - set(objectives)
        if unknown:
            raise ValueError(f"rising objectives {sorted(unknown)} are not among {sorted(objectives)}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.objectives = nn.ModuleDict(dict(objectives))
        self.rising = tuple(rising)
        self.decay = decay
        self.curriculum = curriculum
        self.scale_logits = scale_logits
        # lambda_j = softplus(raw_j) > 0, starting at 1 for every objective.
        start = math.log(math.expm1(1.0))
        self.raw_lambdas = nn.Parameter(torch.full((len(objectives),), start))

    def prepare(self, context: LossContext) -> None:
        for objective in self.objectives.values():
            objective.prepare(context)

    @property
    def lambdas(self) -> Tensor:
        return F.softplus(self.raw_lambdas)

    def schedule(self, step: int) -> Tensor:
        """Curriculum factor per objective at optimiser step `step`."""
        if not self.curriculum:
            return torch.ones(len(self.objectives))
        falling = math.exp(-self.decay * step)
        return torch.tensor([1.0 - falling if name in self.rising else falling for name in self.objectives])

    def alphas(self, step: int) -> Tensor:
        """alpha'_j = lambda'_j / sum_k lambda'_k (all-zero lambda' only if every factor is 0)."""
        scaled = self.lambdas * self.schedule(step).to(self.raw_lambdas.device)
        return scaled / scaled.sum().clamp_min(1e-12)

    def forward(self, logits: Tensor, labels: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        alphas = self.alphas(step)
        terms: dict[str, Tensor] = {"curriculum/factor": torch.tensor(math.exp(-self.decay * step))}
        total = logits.new_zeros((), dtype=torch.float32)
        for j, (name, objective) in enumerate(self.objectives.items()):
            weights = objective.token_weights(labels, step)
            if self.scale_logits:
                loss_j = token_cross_entropy(logits * alphas[j], labels, weights)
                total = total + loss_j
            else:
                loss_j = token_cross_entropy(logits, labels, weights)
                total = total + alphas[j] * loss_j
            terms[f"objectives/loss_{name}"] = loss_j.detach()
            terms[f"objectives/lambda_{name}"] = self.lambdas[j].detach()
            terms[f"objectives/alpha_{name}"] = alphas[j].detach()
        return total, terms


__all__ = ["MultiTargetCurriculum"]
