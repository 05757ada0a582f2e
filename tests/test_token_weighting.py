"""Front-Greater and Frequency token weights against brute-force computations on hand-built cases."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from genrec_lightning.losses import Frequency, FrontGreater, LossContext, token_cross_entropy
from genrec_lightning.losses.weighting import effective_number, front_greater_weights, prefix_dispersions
from genrec_lightning.semantic_ids import PAD, SemanticIds

# A hand-built ID tree: 8 items, 3 levels, 2-d embeddings.
CODES = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [2, 0, 0]])
EMBEDDINGS = torch.tensor(
    [[0.0, 0.0], [0.2, 0.1], [1.0, 0.9], [1.2, 1.0], [5.0, 5.0], [5.1, 4.8], [6.0, 6.5], [-3.0, 4.0]]
)


def brute_force_mu(codes: torch.Tensor, embeddings: torch.Tensor) -> list[float]:
    mus = []
    for k in range(codes.shape[1] + 1):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, row in enumerate(codes.tolist()):
            groups[tuple(row[:k])].append(i)
        total = 0.0
        for members in groups.values():
            vectors = [embeddings[i].double() for i in members]
            centroid = sum(vectors) / len(vectors)
            variance = sum(float(((v - centroid) ** 2).sum()) for v in vectors) / len(vectors)
            total += len(members) / len(codes) * variance  # E_I over uniformly drawn items
        mus.append(total)
    return mus


def test_prefix_dispersions_equal_a_group_loop() -> None:
    mu = prefix_dispersions(CODES, EMBEDDINGS)
    assert mu.tolist() == pytest.approx(brute_force_mu(CODES, EMBEDDINGS), rel=1e-9)
    assert (mu[:-1] >= mu[1:] - 1e-12).all()  # Lemma 4.1: refinement never increases dispersion
    assert mu[-1] == pytest.approx(0.0)  # unique full IDs: every final group is one item


def test_front_greater_weights_follow_dispersion_reduction() -> None:
    mu = brute_force_mu(CODES, EMBEDDINGS)
    delta = [max(mu[k - 1] - mu[k], 0.0) for k in range(1, 4)]
    expected = [3 * d / sum(delta) for d in delta]
    weights = front_greater_weights(CODES, EMBEDDINGS)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert (weights >= 0).all() and weights.sum().item() == pytest.approx(3.0)
    assert weights[0] > weights[2]  # coarse clusters first: the first token disambiguates most


def test_front_greater_refuses_uninformative_ids() -> None:
    with pytest.raises(ValueError, match="do not reduce"):
        front_greater_weights(CODES, torch.ones(8, 2))


def fake_context(train_targets: torch.Tensor) -> LossContext:
    """LossContext over a stand-in datamodule: items 0..7, the given training targets."""
    ids = SemanticIds.from_codes(CODES, 4, dedup="none")
    split = SimpleNamespace(target_items=train_targets)
    data = SimpleNamespace(split=lambda name: split, item_embeddings=lambda: EMBEDDINGS)
    return LossContext(ids, data)


def test_front_greater_loss_is_position_weighted_cross_entropy() -> None:
    loss = FrontGreater()
    loss.prepare(fake_context(torch.arange(8)))
    torch.manual_seed(0)
    logits = torch.randn(5, 3, 20)
    labels = torch.randint(3, 20, (5, 3))
    value, _ = loss(logits, labels)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(5, 3)
    w = front_greater_weights(CODES, EMBEDDINGS)
    assert value.item() == pytest.approx((ce * w).mean().item(), rel=1e-5)
    loss.position_weights = torch.ones(3)  # all-equal weights: plain cross-entropy
    assert loss(logits, labels)[0].item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    )


def test_frequency_weights_equal_the_closed_form_over_training_targets() -> None:
    train = torch.tensor([0, 0, 0, 1, 4, 4, 7, 2, 0, 5])  # the training targets only
    context = fake_context(train)
    rule = Frequency(beta=0.99)
    rule.prepare(context)
    ids = context.ids
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for item in train.tolist():
        for level, code in enumerate(CODES[item].tolist()):
            counts[level, code] += 1
    labels = ids.tokens(torch.tensor([0, 3, 7, 6]))
    labels[1, 2] = PAD
    weights = rule.token_weights(labels)
    for b, item in enumerate([0, 3, 7, 6]):
        raw = []
        for level, code in enumerate(CODES[item].tolist()):
            if labels[b, level] == PAD:
                raw.append(0.0)
                continue
            n = max(counts[level, code], 1)
            raw.append((1 - 0.99) / (1 - 0.99**n))
        real = sum(1 for r in range(3) if labels[b, r] != PAD)
        expected = [real * r / sum(raw) for r in raw]
        assert weights[b].tolist() == pytest.approx(expected, rel=1e-5)
    # Rare tokens weigh more: item 7's first code (seen once) vs item 0's (seen 5 times).
    assert weights[2, 0] > weights[0, 0]


def test_frequency_ignores_validation_and_test_targets() -> None:
    """Counts come from `split("train")` only: a context whose train split differs changes them."""
    only_train = Frequency()
    only_train.prepare(fake_context(torch.tensor([0, 1, 2])))
    with_more = Frequency()
    with_more.prepare(fake_context(torch.tensor([0, 1, 2, 7, 7, 7])))
    token = SemanticIds.from_codes(CODES, 4, dedup="none").tokens(torch.tensor([7]))[0, 0]
    assert only_train.token_inverse_effective[token] > with_more.token_inverse_effective[token]


def test_effective_number_and_bad_arguments() -> None:
    n = torch.tensor([1, 2, 10])
    assert effective_number(n, 0.9).tolist() == pytest.approx(
        [sum(0.9**j for j in range(m)) for m in (1, 2, 10)]
    )
    with pytest.raises(ValueError, match="beta"):
        Frequency(beta=1.0)
    with pytest.raises(RuntimeError, match="prepare"):
        Frequency().token_weights(torch.ones(2, 3, dtype=torch.long) + 3)
    with pytest.raises(RuntimeError, match="prepare"):
        FrontGreater().token_weights(torch.ones(2, 3, dtype=torch.long) + 3)


def test_uniform_weights_equal_torch_cross_entropy() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(4, 3, 9), torch.randint(3, 9, (4, 3))
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert token_cross_entropy(logits, labels, torch.ones(4, 3)).item() == pytest.approx(expected.item())
