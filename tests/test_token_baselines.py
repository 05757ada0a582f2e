"""Pos, IGD, Rank, CFT, the linear-schedule ablations and the official Front-Greater variant,
each against an independent computation; then CFT and a schedule through GenerativeRecommender."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_recommender import data, datamodule, tiny_experiment, tiny_model  # noqa: F401  (fixture `data`)
from test_token_weighting import CODES, EMBEDDINGS, fake_context

from genrec_lightning.cli import GenRecCLI
from genrec_lightning.losses import (
    CFT,
    IGD,
    CrossEntropyTokenLoss,
    Frequency,
    FrontGreater,
    LinearSchedule,
    LossContext,
    MultiTargetCurriculum,
    Position,
    Rank,
)
from genrec_lightning.losses.baselines import information_gains
from genrec_lightning.losses.weighting import front_greater_weights
from genrec_lightning.semantic_ids import SemanticIds


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits over the 15-token vocabulary of the hand-built IDs, labels of 6 target items."""
    torch.manual_seed(seed)
    items = torch.tensor([0, 3, 7, 6, 1, 0])
    labels = SemanticIds.from_codes(CODES, 4, dedup="none").tokens(items)
    return torch.randn(6, 3, 15), labels, items


def per_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def test_position_weights_fall_linearly_and_uniform_is_cross_entropy() -> None:
    logits, labels, _ = batch()
    raw = torch.tensor([1.0, 0.75, 0.5])  # 1 -> 0.5 over three tokens
    loss, _ = Position(last=0.5)(logits, labels)
    ce = per_token_ce(logits, labels)
    assert loss.item() == pytest.approx(((ce * raw).sum() / (raw.sum() * 6)).item(), rel=1e-6)
    assert Position(last=0.5, normalize=False).token_weights(labels)[0].tolist() == pytest.approx(
        raw.tolist()
    )
    flat, _ = Position(last=1.0)(logits, labels)
    assert flat.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item(), rel=1e-6
    )


def brute_force_gains(codes: torch.Tensor, prior: list[float]) -> list[list[float]]:
    def entropy(members: list[int]) -> float:
        mass = sum(prior[i] for i in members)
        if mass == 0:
            return 0.0
        return -sum(prior[i] / mass * math.log(prior[i] / mass) for i in members if prior[i] > 0)

    rows = codes.tolist()
    out = []
    for row in rows:
        groups = [[j for j, other in enumerate(rows) if other[:k] == row[:k]] for k in range(len(row) + 1)]
        out.append([entropy(groups[k]) - entropy(groups[k + 1]) for k in range(len(row))])
    return out


def test_information_gains_equal_a_brute_force_entropy_loop() -> None:
    prior = [5.0, 1.0, 2.0, 0.0, 3.0, 3.0, 1.0, 4.0]
    gains = information_gains(CODES, torch.tensor(prior))
    assert gains.tolist() == [pytest.approx(row, abs=1e-9) for row in brute_force_gains(CODES, prior)]
    # Item 7 is alone under prefix (2,): its later tokens gain nothing; item 3 (no mass) neither.
    assert gains[7, 1:].abs().max() < 1e-12 and gains[3, 2] == pytest.approx(0.0, abs=1e-12)


def igd_context(train: list[int], valid: list[int], test: list[int]) -> LossContext:
    ids = SemanticIds.from_codes(CODES, 4, dedup="none")
    splits = {name: SimpleNamespace(target_items=torch.tensor(t)) for name, t in
              (("train", train), ("val", valid), ("test", test))}  # fmt: skip
    return LossContext(
        ids, SimpleNamespace(split=lambda name: splits[name], item_embeddings=lambda: EMBEDDINGS)
    )


def test_igd_prior_ignores_validation_and_test_targets() -> None:
    train, valid, test = [0, 0, 1, 2, 4, 5, 7], [3, 3, 3, 6], [6, 6, 6, 3]
    rule = IGD(zero_gain_weight=0.1)
    rule.prepare(igd_context(train, valid, test))
    prior = torch.bincount(torch.tensor(train), minlength=8).double()
    gains = torch.tensor(brute_force_gains(CODES, prior.tolist()))
    expected = torch.where(gains > 1e-9, 1.0, 0.1)
    assert torch.allclose(rule.item_token_weights, expected.float())
    leaky = IGD()
    leaky.prepare(igd_context(train + valid + test, [], []))  # what counting every split would give
    assert not torch.equal(rule.item_token_weights, leaky.item_token_weights)
    # The loss is sum(w * ce) / sum(w) over the batch.
    logits, labels, items = batch()
    loss, _ = rule(logits, labels, items)
    w = expected[items]
    assert loss.item() == pytest.approx(((per_token_ce(logits, labels) * w).sum() / w.sum()).item(), rel=1e-6)
    with pytest.raises(ValueError, match="items"):
        rule(logits, labels)


def test_igd_with_equal_weights_is_cross_entropy() -> None:
    rule = IGD(zero_gain_weight=1.0)
    rule.prepare(fake_context(torch.arange(8)))
    logits, labels, items = batch(1)
    loss, _ = rule(logits, labels, items)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item(), rel=1e-6
    )


def test_rank_is_cross_entropy_at_a_temperature() -> None:
    logits, labels, _ = batch()
    for temperature in (0.5, 1.0, 2.0):
        loss, _ = Rank(temperature)(logits, labels)
        expected = F.cross_entropy(logits.flatten(0, 1) / temperature, labels.flatten())
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        Rank(0.0)


def test_cft_adds_the_weighted_counterfactual_effect() -> None:
    logits, labels, items = batch()
    counterfactual = torch.randn_like(logits)
    loss, terms = CFT(weight=0.1, position_last=0.5)(logits, labels, items, counterfactual)
    w = torch.tensor([1.0, 0.75, 0.5]).expand(6, 3)
    factual = (per_token_ce(logits, labels) * w).sum() / w.sum()
    effect = (per_token_ce(logits - counterfactual, labels) * w).sum() / w.sum()
    assert loss.item() == pytest.approx((factual + 0.1 * effect).item(), rel=1e-6)
    assert terms["objectives/loss_cft"].item() == pytest.approx(effect.item(), rel=1e-6)
    plain, _ = CFT(weight=0.0, position_last=None)(logits, labels, items, counterfactual)
    assert plain.item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="counterfactual"):
        CFT()(logits, labels, items)
    with pytest.raises(ValueError, match="not a token weighting rule"):
        MultiTargetCurriculum({"cft": CFT(), "or": CrossEntropyTokenLoss()}, rising=())


def test_linear_schedules_hand_over_between_objectives() -> None:
    context = fake_context(torch.tensor([0, 0, 1, 4, 7, 2, 2, 5]))
    two = LinearSchedule({"fg": FrontGreater(), "or": CrossEntropyTokenLoss()})
    three = LinearSchedule({"fg": FrontGreater(), "or": CrossEntropyTokenLoss(), "fr": Frequency()})
    for loss in (two, three):
        loss.prepare(context)
    assert two.coefficients(0, 100).tolist() == [1.0, 0.0]
    assert two.coefficients(25, 100).tolist() == [0.75, 0.25]
    assert two.coefficients(500, 100).tolist() == [0.0, 1.0]
    assert three.coefficients(25, 100).tolist() == [0.5, 0.5, 0.0]
    assert three.coefficients(75, 100).tolist() == [0.0, 0.5, 0.5]
    assert three.coefficients(100, 100).tolist() == [0.0, 0.0, 1.0]
    logits, labels, items = batch()
    with pytest.raises(RuntimeError, match="run length"):
        three(logits, labels, items)
    three.set_step(60, 100)  # 0.8 of CE, 0.2 of Frequency
    loss, terms = three(logits, labels, items)
    parts = {name: objective(logits, labels, items)[0] for name, objective in three.objectives.items()}
    assert loss.item() == pytest.approx((0.8 * parts["or"] + 0.2 * parts["fr"]).item(), rel=1e-6)
    assert terms["objectives/alpha_fg"].item() == 0.0 and terms[
        "objectives/alpha_fr"
    ].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="two objectives"):
        LinearSchedule({"or": CrossEntropyTokenLoss()})


def test_official_front_greater_uses_distances_and_log1p() -> None:
    mus = []
    for k in range(CODES.shape[1] + 1):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, row in enumerate(CODES.tolist()):
            groups[tuple(row[:k])].append(i)
        centroids = {key: EMBEDDINGS[m].double().mean(0) for key, m in groups.items()}
        mus.append(sum(float((EMBEDDINGS[i].double() - centroids[tuple(row[:k])]).norm())
                       for i, row in enumerate(CODES.tolist())) / len(CODES))  # fmt: skip
    r = [math.log1p(max(mus[k] - mus[k + 1], 0.0)) for k in range(3)]
    expected = [3 * v / sum(r) for v in r]
    assert front_greater_weights(CODES, EMBEDDINGS, "official").tolist() == pytest.approx(expected, rel=1e-5)
    assert front_greater_weights(CODES, EMBEDDINGS).tolist() != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="variant"):
        FrontGreater(variant="log")


def test_counterfactual_pass_ignores_the_history(data: dict[str, Any]) -> None:  # noqa: F811
    dm = datamodule(data)
    model = tiny_model(dm, loss=CFT())
    model.eval()
    loader = dm.train_dataloader()
    first = next(iter(loader))
    other = dict(first, history=first["history"].flip(0), history_mask=first["history_mask"].flip(0))
    with torch.no_grad():
        a = model.network(*model.empty_history_inputs(first), model.labels(first["target"]))
        b = model.network(*model.empty_history_inputs(other), model.labels(first["target"]))
    assert torch.equal(a, b)
    loss = model.training_step(first, 0)
    assert torch.isfinite(loss) and set(model.loss_terms) == {"objectives/loss_ce", "objectives/loss_cft"}


def test_schedules_get_the_run_length_through_the_cli(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["loss"] = {
        "class_path": "genrec_lightning.losses.LinearSchedule",
        "init_args": {"objectives": {"fg": {"class_path": "genrec_lightning.losses.FrontGreater"},
                                     "or": {"class_path": "genrec_lightning.losses.CrossEntropyTokenLoss"}}},
    }  # fmt: skip
    cfg["trainer"].update(max_steps=4, limit_train_batches=4)
    config.write_text(yaml.safe_dump(cfg))
    cli = GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false"])
    loss = cli.model.loss
    assert loss.total_steps == 4 and loss.step == 3  # the last batch trained at step 3 of 4
    assert cli.model.loss_terms["objectives/alpha_or"].item() == pytest.approx(0.75)
