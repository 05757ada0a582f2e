"""Reference decoder for tests and benchmarks: HF `generate` beam search + `prefix_allowed_tokens_fn`.

This is how most semantic-ID recommenders decode: a Python trie of valid token prefixes queried
once per beam per step. It is kept out of the package on purpose (docs/design.md §7); it exists to
check that `genrec_lightning.generation.beam_search` returns the same rankings and to measure
the speed-up.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.semantic_ids import BOS, EOS, SemanticIds, code_tokens


def token_trie(ids: SemanticIds) -> dict[tuple[int, ...], list[int]]:
    """Map every decoder prefix (BOS + tokens) to the sorted list of tokens that may follow it."""
    trie: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for row in code_tokens(ids.codes, ids.token_offsets).tolist():
        for level, token in enumerate(row):
            trie[(BOS, *row[:level])].add(token)
    return {prefix: sorted(tokens) for prefix, tokens in trie.items()}


@torch.no_grad()
def hf_beam_search(
    network: T5Recommender,
    ids: SemanticIds,
    input_ids: Tensor,
    attention_mask: Tensor,
    beam_size: int,
    trie: dict[tuple[int, ...], list[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-`beam_size` (items [B, W], sequence log-probabilities [B, W]) from HF `generate`."""
    trie = token_trie(ids) if trie is None else trie

    def allowed(_: int, prefix: Tensor) -> list[int]:
        return trie.get(tuple(prefix.tolist()), [EOS])

    out = network.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=beam_size,
        num_return_sequences=beam_size,
        max_new_tokens=ids.num_levels,
        min_new_tokens=ids.num_levels,
        prefix_allowed_tokens_fn=allowed,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[:, 1 : 1 + ids.num_levels]
    items = ids.items_from_tokens(tokens).view(-1, beam_size)
    if beam_size > 1:
        return items, out.sequences_scores.view(-1, beam_size)
    # A single beam is greedy search, which reports no sequence score: sum the log-probabilities.
    logp = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], dim=1)
    return items, logp.gather(-1, tokens.unsqueeze(-1)).sum(dim=(1, 2)).view(-1, 1)


__all__ = ["hf_beam_search", "token_trie"]
