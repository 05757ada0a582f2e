"""Constrained beam search: valid items only, equal to HF `generate` and to exact scoring."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from genrec_lightning.generation import beam_search, exact_ranking, exact_scores
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.semantic_ids import PAD, SemanticIds

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hf_reference", ROOT / "benchmarks" / "hf_reference.py")
hf_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hf_reference)  # type: ignore[union-attr]

TINY = dict(d_model=32, d_ff=64, d_kv=8, num_heads=2, num_encoder_layers=2, num_decoder_layers=2)


def tiny_ids(num_items: int = 40, codebook_size: int = 4, levels: int = 2, seed: int = 0) -> SemanticIds:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, codebook_size, (num_items, levels), generator=generator)
    return SemanticIds.from_codes(raw, codebook_size, dedup="suffix")


def tiny_inputs(
    ids: SemanticIds, users: int = 6, history: int = 5, seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """Flattened, left-padded history tokens and their mask, as the recommender builds them."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(0, ids.num_items, (users, history), generator=generator)
    lengths = torch.randint(1, history + 1, (users,), generator=generator)
    mask = torch.arange(history) >= (history - lengths)[:, None]
    items = torch.where(mask, items, ids.num_items)
    tokens = ids.tokens(items).flatten(1)
    return tokens, (tokens != PAD).long()


@pytest.fixture(scope="module")
def setup() -> tuple[SemanticIds, T5Recommender, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ids = tiny_ids()
    network = T5Recommender(ids.vocab_size, **TINY).eval()
    return ids, network, *tiny_inputs(ids)


def test_beams_are_real_unique_items_with_sorted_scores(setup) -> None:
    ids, network, tokens, mask = setup
    out = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=10)
    assert out.items.shape == out.scores.shape == (len(tokens), 10)
    assert ((out.items >= 0) & (out.items < ids.num_items)).all()
    for row in out.items.tolist():
        assert len(set(row)) == len(row)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    assert torch.equal(out.codes, ids.codes[out.items])
    assert (out.scores <= 0).all()


def test_beam_search_equals_hf_generate_with_prefix_allowed_tokens_fn(setup) -> None:
    ids, network, tokens, mask = setup
    for beam in (1, 5, 12):
        ours = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=beam)
        items, scores = hf_reference.hf_beam_search(network, ids, tokens, mask, beam)
        assert torch.equal(ours.items, items), beam
        torch.testing.assert_close(ours.scores, scores, atol=1e-4, rtol=1e-4)


def test_full_width_beam_equals_exact_scoring(setup) -> None:
    ids, network, tokens, mask = setup
    ours = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=ids.num_items)
    scores = exact_scores(network, ids.codes, ids.token_offsets, tokens, mask, item_chunk=7)
    exact = exact_ranking(scores, ids.codes, ids.num_items)
    assert torch.equal(ours.items, exact.items)
    torch.testing.assert_close(ours.scores, exact.scores, atol=1e-4, rtol=1e-4)
    # The exact likelihoods are a distribution over the IDs' tokens: they cannot sum above 1.
    assert (scores.exp().sum(1) <= 1 + 1e-5).all()


def test_exact_scores_equal_teacher_forced_log_likelihood(setup) -> None:
    ids, network, tokens, mask = setup
    scores = exact_scores(network, ids.codes, ids.token_offsets, tokens, mask)
    labels = ids.codes[3:4] + ids.token_offsets
    for user in range(2):
        logits = network(tokens[user : user + 1], mask[user : user + 1], T5Recommender.shift_right(labels))
        reference = sum(
            torch.log_softmax(logits[0, t], -1)[labels[0, t]].item() for t in range(labels.shape[1])
        )
        assert scores[user, 3].item() == pytest.approx(reference, abs=1e-4)


def test_beam_wider_than_catalogue_pads_with_empty_slots(setup) -> None:
    ids, network, tokens, mask = setup
    small = SemanticIds.from_codes(ids.raw_codes[:3], 4, dedup="suffix")
    index = small.prefix_index()
    out = beam_search(network, index, ids.token_offsets[: small.num_levels], tokens, mask, beam_size=8)
    assert (out.items[:, :3] >= 0).all() and (out.items[:, 3:] == -1).all()
    assert torch.isinf(out.scores[:, 3:]).all() and torch.isfinite(out.scores[:, :3]).all()
    assert (out.codes[:, 3:] == -1).all()
    assert sorted(out.items[0, :3].tolist()) == [0, 1, 2]


def test_soft_inputs_match_token_inputs(setup) -> None:
    ids, network, tokens, mask = setup
    embeds = network.embedding(tokens)
    a = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=6)
    b = beam_search(network, ids.prefix_index(), ids.token_offsets, None, mask, 6, inputs_embeds=embeds)
    assert torch.equal(a.items, b.items)
    torch.testing.assert_close(a.scores, b.scores)


def test_asymmetric_encoder_decoder_depth() -> None:
    """UniGRec-style shapes work (HF's own generate sizes its cache by the encoder depth)."""
    ids = tiny_ids()
    network = T5Recommender(
        ids.vocab_size, **{**TINY, "num_encoder_layers": 1, "num_decoder_layers": 3}
    ).eval()
    tokens, mask = tiny_inputs(ids)
    out = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=ids.num_items)
    exact = exact_ranking(exact_scores(network, ids.codes, ids.token_offsets, tokens, mask), ids.codes, 40)
    assert torch.equal(out.items, exact.items)


def test_user_tokens_are_never_generated() -> None:
    ids = tiny_ids()
    network = T5Recommender(ids.vocab_size, num_user_buckets=7, **TINY).eval()
    tokens, mask = tiny_inputs(ids)
    users = network.user_tokens(torch.tensor([0, 1, 9, 13, 20, 6]))
    assert users.min() >= ids.vocab_size and users.max() < ids.vocab_size + 7
    tokens = torch.cat([users[:, None], tokens], dim=1)
    mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    logits = network(tokens, mask, torch.full((6, 1), 2))
    assert logits.shape[-1] == ids.vocab_size
    out = beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=5)
    assert ((out.items >= 0) & (out.items < ids.num_items)).all()
    assert math.isfinite(out.scores.sum().item())


def test_bad_arguments() -> None:
    ids = tiny_ids()
    network = T5Recommender(ids.vocab_size, **TINY).eval()
    tokens, mask = tiny_inputs(ids)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(network, ids.prefix_index(), ids.token_offsets, tokens, mask, beam_size=0)
    with pytest.raises(ValueError, match="levels"):
        beam_search(network, ids.prefix_index(), ids.token_offsets[:1], tokens, mask, beam_size=3)
    with pytest.raises(ValueError, match="vocab_size"):
        T5Recommender(2)
