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
