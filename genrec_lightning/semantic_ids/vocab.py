"""Token vocabulary of the semantic IDs: special tokens and the per-level token ranges.

The recommender's T5 vocabulary, its labels, the constrained beam search and the token weights all
read token ids through these functions, so the layout is defined once: PAD, EOS, BOS first, then
one contiguous range per level, so a token id names its level as well as its code:
level l code c -> `NUM_SPECIAL_TOKENS + sum(K_0..K_{l-1}) + c`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PAD, EOS, BOS = 0, 1, 2
NUM_SPECIAL_TOKENS = 3


def vocab_size(codebook_sizes: Sequence[int]) -> int:
    """Specials plus every level's codes: the size of the recommender's token vocabulary."""
    return NUM_SPECIAL_TOKENS + sum(int(s) for s in codebook_sizes)


def token_offsets(codebook_sizes: Sequence[int]) -> Tensor:
    """[L] int64 first token id of each level's range."""
    sizes = torch.tensor([int(s) for s in codebook_sizes], dtype=torch.int64)
    return NUM_SPECIAL_TOKENS + torch.cumsum(sizes, 0) - sizes


def code_tokens(codes: Tensor, offsets: Tensor) -> Tensor:
    """Codes [..., L] -> token ids [..., L], given the `token_offsets` of those L levels."""
    return codes + offsets


def padded_token_table(codes: Tensor, offsets: Tensor) -> Tensor:
    """[N + 1, L] token ids of an ID table [N, L]; row N is the padding item (all PAD) so padded
    histories (item id N) gather with one index."""
    table = code_tokens(codes, offsets)
    return torch.cat([table, table.new_full((1, table.shape[-1]), PAD)])
