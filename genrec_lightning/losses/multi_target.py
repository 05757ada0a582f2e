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


class ObjectiveMixture(TokenLoss):
    """Several named token objectives prepared together and mixed by the subclass's weights."""

    def __init__(self, objectives: Mapping[str, TokenLoss]) -> None:
        super().__init__()
        for name, objective in objectives.items():
            if objective.needs_counterfactual:
                raise ValueError(f"objective {name!r} needs a counterfactual pass; use it on its own")
        self.objectives = nn.ModuleDict(dict(objectives))

    def prepare(self, context: LossContext) -> None:
        for objective in self.objectives.values():
            objective.prepare(context)


class MultiTargetCurriculum(ObjectiveMixture):
    """Learnable objective weights with an exp(-c t) curriculum.

    t is `self.step`, the optimiser step set by the `CurriculumScheduler` callback (restored with
    `trainer.global_step` on resume); the lambdas are parameters, so checkpoints carry them.

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
        if objectives is None:
            objectives = {"fg": FrontGreater(), "fr": Frequency(), "or": CrossEntropyTokenLoss()}
        if not objectives:
            raise ValueError("MultiTargetCurriculum needs at least one objective")
        unknown = set(rising) - set(objectives)
        if unknown:
            raise ValueError(f"rising objectives {sorted(unknown)} are not among {sorted(objectives)}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        for name, objective in objectives.items():
            if objective.needs_counterfactual or type(objective).forward is not TokenLoss.forward:
                raise ValueError(
                    f"objective {name!r} ({type(objective).__name__}) is not a token weighting rule; "
                    "MultiTargetCurriculum mixes rules that only weight tokens or scale logits"
                )
        super().__init__(objectives)
        self.rising = tuple(rising)
        self.decay = decay
        self.curriculum = curriculum
        self.scale_logits = scale_logits
        self.uses_step = curriculum
        # lambda_j = softplus(raw_j) > 0, starting at 1 for every objective.
        start = math.log(math.expm1(1.0))
        self.raw_lambdas = nn.Parameter(torch.full((len(objectives),), start))

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

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        items: Tensor | None = None,
        counterfactual_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        alphas = self.alphas(self.step)
        terms: dict[str, Tensor] = {}
        if self.curriculum:
            terms["curriculum/factor"] = torch.tensor(math.exp(-self.decay * self.step))
        total = logits.new_zeros((), dtype=torch.float32)
        for j, (name, objective) in enumerate(self.objectives.items()):
            weights = objective.token_weights(labels, items)
            scale = objective.logit_scale
            if self.scale_logits:
                loss_j = token_cross_entropy(logits * (alphas[j] * scale), labels, weights)
                total = total + loss_j
            else:
                loss_j = token_cross_entropy(logits if scale == 1.0 else logits * scale, labels, weights)
                total = total + alphas[j] * loss_j
            terms[f"objectives/loss_{name}"] = loss_j.detach()
            terms[f"objectives/lambda_{name}"] = self.lambdas[j].detach()
            terms[f"objectives/alpha_{name}"] = alphas[j].detach()
        return total, terms


class LinearSchedule(ObjectiveMixture):
    """Hand-scheduled mixture (Table 4's first two ablation rows): linear hand-over between objectives.

    The objectives are visited in order over the run: with K objectives, training is cut into
    K - 1 equal phases and in phase i the loss moves linearly from objective i to objective i + 1.
    {"fg": FrontGreater, "or": CE} is "Front-Greater, linearly back to cross-entropy";
    {"fg", "or", "fr"} is "Front-Greater -> cross-entropy -> Frequency".

    Args:
        objectives: name -> token loss, in schedule order (at least two).
        total_steps: length of the schedule in optimiser steps; by default the run's planned
            length `trainer.estimated_stepping_batches` (set by the `CurriculumScheduler`
            callback), so a run that early stopping ends sooner stops part-way along it.
    """

    uses_step = True

    def __init__(self, objectives: Mapping[str, TokenLoss], total_steps: int | None = None) -> None:
        if len(objectives) < 2:
            raise ValueError(f"LinearSchedule needs at least two objectives, got {list(objectives)}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        super().__init__(objectives)
        self.schedule_steps = total_steps

    def coefficients(self, step: int, total_steps: int) -> Tensor:
        """[K] mixing weights at `step` (two neighbours are non-zero, summing to 1)."""
        phases = len(self.objectives) - 1
        position = min(max(step / total_steps, 0.0), 1.0) * phases
        i = min(int(position), phases - 1)
        out = torch.zeros(len(self.objectives))
        out[i], out[i + 1] = 1.0 - (position - i), position - i
        return out

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        items: Tensor | None = None,
        counterfactual_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        total_steps = self.schedule_steps or self.total_steps
        if not total_steps or not math.isfinite(total_steps):
            raise RuntimeError(
                "LinearSchedule needs the run length: train through GenerativeRecommender (its "
                "CurriculumScheduler callback supplies it; set trainer.max_steps or max_epochs) or "
                "pass total_steps"
            )
        coefficients = self.coefficients(self.step, int(total_steps))
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {"curriculum/progress": torch.tensor(min(self.step / total_steps, 1.0))}
        for j, (name, objective) in enumerate(self.objectives.items()):
            terms[f"objectives/alpha_{name}"] = coefficients[j]
            if coefficients[j] > 0:
                loss_j, _ = objective(logits, labels, items)
                total = total + coefficients[j] * loss_j
                terms[f"objectives/loss_{name}"] = loss_j.detach()
        return total, terms


__all__ = ["LinearSchedule", "MultiTargetCurriculum", "ObjectiveMixture"]
