"""Multi-target learning with curriculum (token-weighting paper §4.2).

Objectives j (default: Front-Greater `fg`, Frequency `fr`, plain cross-entropy `or`) each have a
learnable positive lambda_j. The curriculum multiplies the decaying objectives' lambdas by
exp(-c t) and the rising ones' (`fr`) by 1 - exp(-c t), with t the optimiser step
(`trainer.global_step`, restored on resume), then normalises: alpha'_j = lambda'_j / sum_k lambda'_k.
The objective is sum_j alpha'_j L_j (default), or the paper's literal form where alpha'_j scales
the logits inside each objective's softmax.

The rate c is either the paper's absolute value (2e-5 per step, tied to the paper's run length) or
derived from the run's planned length (`decay_at`), so the FG/CE -> FR hand-over happens inside a
run of any length. Minimising sum_j alpha_j L_j over learnable lambdas moves weight to the
objective with the smallest loss; `uncertainty` adds a penalty that holds the weights back.
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
        decay: the curriculum rate c (per optimiser step); 2e-5 as in the paper, whose runs are
            long enough for exp(-c t) to fall well below 1. Ignored when `decay_at` is set.
        decay_at: progress-relative curriculum: the fraction of the run's planned optimiser steps
            (`trainer.estimated_stepping_batches`) at which exp(-c t) reaches `decay_to`, i.e.
            c = -ln(decay_to) / (decay_at x planned steps), resolved when training starts and
            logged as `curriculum/c`. None uses `decay` as given.
        decay_to: the curriculum factor reached at `decay_at` (0.5: the objectives' halfway point).
        curriculum: False keeps the learnable weights without any schedule (Table 4 "Multi-Target").
        scale_logits: the paper's literal form (logits scaled by alpha'_j before each softmax)
            instead of weighting the losses.
        uncertainty: r >= 0; adds r x mean_j(-log alpha_j), alpha_j = lambda_j / sum_k lambda_k the
            learnable weights before the curriculum. Like the log-sigma term of uncertainty
            weighting it bounds the drift towards the lowest loss: at the optimum alpha_j is
            proportional to 1 / (L_j + mu) instead of all weight on min_j L_j. 0 (default) is the
            paper's objective.
    """

    def __init__(
        self,
        objectives: Mapping[str, TokenLoss] | None = None,
        rising: Sequence[str] = ("fr",),
        decay: float = 2e-5,
        decay_at: float | None = None,
        decay_to: float = 0.5,
        curriculum: bool = True,
        scale_logits: bool = False,
        uncertainty: float = 0.0,
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
        if decay_at is not None and not 0.0 < decay_at <= 1.0:
            raise ValueError(f"decay_at is a fraction of the run and must be in (0, 1], got {decay_at}")
        if not 0.0 < decay_to < 1.0:
            raise ValueError(
                f"decay_to is a curriculum factor exp(-c t) and must be in (0, 1), got {decay_to}"
            )
        if uncertainty < 0:
            raise ValueError(f"uncertainty must be >= 0, got {uncertainty}")
        for name, objective in objectives.items():
            if objective.needs_counterfactual or type(objective).forward is not TokenLoss.forward:
                raise ValueError(
                    f"objective {name!r} ({type(objective).__name__}) is not a token weighting rule; "
                    "MultiTargetCurriculum mixes rules that only weight tokens or scale logits"
                )
        super().__init__(objectives)
        self.rising = tuple(rising)
        self.decay = decay
        self.decay_at = decay_at
        self.decay_to = decay_to
        self.curriculum = curriculum
        self.scale_logits = scale_logits
        self.uncertainty = uncertainty
        self.uses_step = curriculum
        # lambda_j = softplus(raw_j) > 0, starting at 1 for every objective.
        start = math.log(math.expm1(1.0))
        self.raw_lambdas = nn.Parameter(torch.full((len(objectives),), start))

    @property
    def lambdas(self) -> Tensor:
        return F.softplus(self.raw_lambdas)

    @property
    def rate(self) -> float:
        """The curriculum rate c per optimiser step: `decay`, or the one `decay_at` resolves to."""
        return self.rate_for(self.total_steps)

    def rate_for(self, total_steps: int | None) -> float:
        """c for a run of `total_steps` planned optimiser steps."""
        if self.decay_at is None:
            return self.decay
        if not total_steps or not math.isfinite(total_steps):
            raise RuntimeError(
                "MultiTargetCurriculum(decay_at=...) needs the run's planned length: train through "
                "GenerativeRecommender with trainer.max_steps or max_epochs set, or give an absolute "
                "rate with `decay` and decay_at: null"
            )
        return -math.log(self.decay_to) / (self.decay_at * total_steps)

    def schedule(self, step: int) -> Tensor:
        """Curriculum factor per objective at optimiser step `step`."""
        if not self.curriculum:
            return torch.ones(len(self.objectives))
        falling = math.exp(-self.rate * step)
        return torch.tensor([1.0 - falling if name in self.rising else falling for name in self.objectives])

    def schedule_note(self, total_steps: int | None) -> str | None:
        """One line on the resolved curriculum for the console when training starts."""
        if not self.curriculum:
            return None
        c = self.rate_for(total_steps)
        if not total_steps:
            return f"curriculum: c = {c:.3g} per optimiser step (run length unknown)"
        end = math.exp(-c * total_steps)
        note = f"curriculum: c = {c:.3g} per optimiser step; exp(-c t) ends at {end:.3g}"
        note += f" after {total_steps:,} steps"
        if self.decay_at is None and end > 0.9:
            note += (
                f" -- the objectives barely move in this run; set decay_at (e.g. 0.5: halfway at step "
                f"{total_steps // 2:,}) for a curriculum relative to the run length"
            )
        return note

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
            terms["curriculum/factor"] = torch.tensor(math.exp(-self.rate * self.step))
            terms["curriculum/c"] = torch.tensor(self.rate)
        total = logits.new_zeros((), dtype=torch.float32)
        if self.uncertainty > 0:
            penalty = self.uncertainty * -torch.log(self.lambdas / self.lambdas.sum()).mean()
            total = total + penalty
            terms["objectives/uncertainty_penalty"] = penalty.detach()
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
