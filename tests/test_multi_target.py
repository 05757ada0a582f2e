"""MultiTargetCurriculum: objective weights, curriculum, both mixing forms, resume, TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_recommender import data, tiny_experiment  # noqa: F401  (module fixture `data`)
from test_token_weighting import fake_context
from test_tokenizer_stage import scalars

from genrec_lightning.cli import GenRecCLI
from genrec_lightning.losses import CrossEntropyTokenLoss, Frequency, FrontGreater, MultiTargetCurriculum
from genrec_lightning.losses.base import token_cross_entropy


def prepared(**kwargs: Any) -> MultiTargetCurriculum:
    loss = MultiTargetCurriculum(**kwargs)
    loss.prepare(fake_context(torch.tensor([0, 0, 1, 4, 7, 2, 2, 5])))
    return loss


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(6, 3, 15), torch.randint(3, 15, (6, 3))  # the fake IDs have 15 tokens


def test_curriculum_starts_without_frequency_and_ends_with_it() -> None:
    loss = prepared(decay=2e-5)
    start = dict(zip(loss.objectives, loss.alphas(0).tolist(), strict=True))
    assert start["fr"] == 0.0 and start["fg"] == pytest.approx(0.5) and start["or"] == pytest.approx(0.5)
    late = dict(zip(loss.objectives, loss.alphas(10_000_000).tolist(), strict=True))
    assert late["fr"] == pytest.approx(1.0, abs=1e-6)
    middle = loss.alphas(int(math.log(2) / 2e-5))  # exp(-ct) = 1/2: lambda' = (1/2, 1/2, 1/2)
    assert middle.tolist() == pytest.approx([1 / 3] * 3, rel=1e-4)
    flat = prepared(curriculum=False)
    assert flat.alphas(0).tolist() == pytest.approx([1 / 3] * 3) == flat.alphas(10**9).tolist()
    assert "curriculum/factor" not in flat(*batch())[1] and not flat.uses_step and loss.uses_step


def test_objective_is_the_alpha_weighted_sum_of_token_losses() -> None:
    loss = prepared(decay=1e-3)
    logits, labels = batch()
    loss.set_step(700)
    total, terms = loss(logits, labels)
    alphas = loss.alphas(700)
    parts = [
        token_cross_entropy(logits, labels, objective.token_weights(labels))
        for objective in loss.objectives.values()
    ]
    assert total.item() == pytest.approx(
        sum(a * p for a, p in zip(alphas, parts, strict=True)).item(), rel=1e-6
    )
    assert terms["objectives/alpha_fr"].item() == pytest.approx(alphas[1].item())
    assert terms["curriculum/factor"].item() == pytest.approx(math.exp(-0.7))
    assert isinstance(loss.objectives["fg"], FrontGreater) and isinstance(loss.objectives["fr"], Frequency)
    assert isinstance(loss.objectives["or"], CrossEntropyTokenLoss)


def test_literal_form_scales_the_logits_and_lambdas_learn() -> None:
    loss = prepared(decay=1e-3, scale_logits=True)
    logits, labels = batch()
    loss.set_step(300)
    total, _ = loss(logits, labels)
    alphas = loss.alphas(300)
    expected = sum(
        token_cross_entropy(logits * alphas[j], labels, objective.token_weights(labels))
        for j, objective in enumerate(loss.objectives.values())
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert loss.raw_lambdas.grad is not None and loss.raw_lambdas.grad.abs().sum() > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rising"):
        MultiTargetCurriculum(rising=("nope",))
    with pytest.raises(ValueError, match="decay"):
        MultiTargetCurriculum(decay=-1.0)
    for bad in (
        {"decay_at": 0.0},
        {"decay_at": 1.5},
        {"decay_to": 1.0},
        {"decay_to": 0.0},
        {"uncertainty": -1.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MultiTargetCurriculum(**bad)


def test_relative_curriculum_derives_c_from_the_planned_run() -> None:
    loss = prepared(decay_at=0.25, decay_to=0.1)
    with pytest.raises(RuntimeError, match="planned length"):
        loss.alphas(0)  # no run length yet: refuse rather than silently use `decay`
    with pytest.raises(RuntimeError, match="decay_at: null"):
        loss.schedule_note(None)
    loss.set_step(0, 1000)
    assert loss.rate == pytest.approx(-math.log(0.1) / 250)
    loss.set_step(250, 1000)
    _, terms = loss(*batch())
    assert terms["curriculum/factor"].item() == pytest.approx(0.1, rel=1e-5)
    assert terms["curriculum/c"].item() == pytest.approx(-math.log(0.1) / 250, rel=1e-5)
    # Twice the run, half the rate: the same factor at the same fraction of the run.
    assert loss.rate_for(2000) == pytest.approx(loss.rate / 2)
    assert "ends at 0.0001 after 1,000 steps" in loss.schedule_note(1000)  # 0.1 ** 4
    # The paper's absolute c in a short run says so and names the fix; a moving one does not.
    assert "decay_at" in prepared(decay=2e-5).schedule_note(1131)
    assert "decay_at" not in prepared(decay=1e-3).schedule_note(1131)
    assert prepared(curriculum=False).schedule_note(1131) is None


def test_uncertainty_penalty_value_and_its_optimum() -> None:
    """The penalty is r x mean(-log alpha); minimising the mixture over lambda alone moves all weight
    to the lowest loss without it, and to alpha_j (L_j + mu) = r / J (a Lagrange stationary point)
    with it."""
    logits, labels = batch()
    loss = prepared(curriculum=False, uncertainty=0.3)
    with torch.no_grad():
        loss.raw_lambdas.copy_(torch.tensor([0.2, -1.0, 0.7]))
    total, terms = loss(logits, labels)
    alphas = loss.lambdas / loss.lambdas.sum()
    parts = [token_cross_entropy(logits, labels, o.token_weights(labels)) for o in loss.objectives.values()]
    penalty = 0.3 * -torch.log(alphas).mean()
    assert terms["objectives/uncertainty_penalty"].item() == pytest.approx(penalty.item(), rel=1e-6)
    assert total.item() == pytest.approx(
        (sum(a * p for a, p in zip(alphas, parts, strict=True)) + penalty).item()
    )

    values = torch.tensor([1.0, 1.5, 2.5])  # fixed objective losses L_j

    def settle(r: float) -> torch.Tensor:
        raw = torch.zeros(3, requires_grad=True)
        optimiser = torch.optim.Adam([raw], lr=0.1)
        for _ in range(1500):
            lam = torch.nn.functional.softplus(raw)
            alpha = lam / lam.sum()
            objective = (alpha * values).sum() + r * -torch.log(alpha).mean()
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
        lam = torch.nn.functional.softplus(raw.detach())
        return lam / lam.sum()

    drifted = settle(0.0)
    assert drifted[0] > 0.97  # the paper's objective: everything on the smallest loss
    held = settle(0.5)
    mu = (0.5 / 3 / held[0] - values[0]).item()
    assert (held * (values + mu)).tolist() == pytest.approx([0.5 / 3] * 3, rel=1e-3)
    assert held[0] > held[1] > held[2] > 0.05  # ordered by loss, none abandoned


def test_resumed_run_continues_the_curriculum_and_logs_weights(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
) -> None:
    """t is the optimiser step restored from the checkpoint, and every weight reaches TensorBoard."""
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["loss"] = {
        "class_path": "genrec_lightning.losses.MultiTargetCurriculum",
        "init_args": {
            "decay": 0.1,
            "objectives": {
                "fr": {"class_path": "genrec_lightning.losses.Frequency"},
                "or": {"class_path": "genrec_lightning.losses.CrossEntropyTokenLoss"},
            },
        },
    }
    cfg["trainer"].update(max_steps=4, limit_train_batches=8, max_epochs=2)
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 4
    # Only the logging interval is configured: the CurriculumScheduler is added by the model.
    cfg["trainer"]["callbacks"].append(
        {"class_path": "genrec_lightning.callbacks.ObjectiveWeights", "init_args": {"every_n_steps": 1}}
    )
    config.write_text(yaml.safe_dump(cfg))
    first = GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false"])
    assert first.trainer.global_step == 4
    last = tmp_path / "checkpoints" / "last.ckpt"
    GenRecCLI(args=["fit", "--config", str(config), "--trainer.max_steps", "8", "--ckpt_path", str(last),
                    "--test_after_fit", "false"])  # fmt: skip
    factors = []
    for run in sorted((tmp_path / "runs" / "tiger").glob("version_*")):
        tags = scalars(run)
        for tag in ("objectives/alpha_fr", "objectives/lambda_or", "objectives/loss_fr"):
            assert tag in tags, f"{tag} not logged in {run.name}"
        factors += [value for _, value in tags["curriculum/factor"]]
    expected = [math.exp(-0.1 * s) for s in range(8)]
    assert factors == pytest.approx(expected, rel=1e-5)  # steps 0..3, then 4..7 after resuming


def test_relative_curriculum_reaches_its_factor_in_tensorboard(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """decay_at 0.5, decay_to 0.25 over 8 planned steps: the factor logged at step 4 is 0.25, c is
    logged, and the final alpha' are printed when training ends."""
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["loss"] = {
        "class_path": "genrec_lightning.losses.MultiTargetCurriculum",
        "init_args": {"decay_at": 0.5, "decay_to": 0.25, "decay": 2e-5},
    }
    cfg["trainer"].update(max_steps=8, limit_train_batches=8, max_epochs=1)
    cfg["trainer"]["callbacks"].append(
        {"class_path": "genrec_lightning.callbacks.ObjectiveWeights", "init_args": {"every_n_steps": 1}}
    )
    config.write_text(yaml.safe_dump(cfg))
    with caplog.at_level("INFO"):
        GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false"])
    tags = scalars(tmp_path / "runs" / "tiger" / "version_0")
    factor = dict(tags["curriculum/factor"])
    c = math.log(4) / 4
    assert factor[4] == pytest.approx(0.25, rel=1e-5)
    assert factor[7] == pytest.approx(math.exp(-7 * c), rel=1e-5)
    assert dict(tags["curriculum/c"])[0] == pytest.approx(c, rel=1e-5)
    assert f"c = {c:.3g} per optimiser step" in caplog.text
    final = next(r.getMessage() for r in caplog.records if "objective weights after step 8" in r.getMessage())
    alpha_fr = dict(tags["objectives/alpha_fr"])[7]
    assert f"alpha_fr {alpha_fr:.3f}" in final and "alpha_fg" in final and "factor" in final
