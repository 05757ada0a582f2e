"""Item -> semantic ID tables: vocabulary layout, deduplication, statistics, prefix index, save/load.

A tokenizer emits raw codes `[N, L]` (level l in [0, K_l)) for the dense items 0..N-1; everything
downstream reads IDs through `SemanticIds`. One job per file, so each can be read alone:

- `vocab.py`: special tokens (PAD, EOS, BOS) and the token layout (per-level offsets, vocabulary
  size, codes -> tokens); the recommender, the T5 network and the losses use it too.
- `dedup.py`: the rules (`suffix`, `reassign_last`, `none`) that make raw codes unique IDs.
- `stats.py`: collision rate, codebook usage/entropy, filter ratios, purity gains (plain torch,
  device-agnostic: callbacks call them on CUDA codes).
- `prefix_index.py`: `PrefixIndex`, the sorted table + CSR map behind constrained beam search.
- `table.py`: `SemanticIds`, the final table with its checks, lookups, statistics and save/load.
- `io.py`: the artifact's file format (file names, meta.json keys, checksum, consistency checks)
  and `ArtifactMismatchError`.

Import from the package (`from genrec_lightning.semantic_ids import SemanticIds`), not the files.
"""

from genrec_lightning.semantic_ids.dedup import (
    DEDUP_METHODS,
    DedupMethod,
    dedup_suffix,
    extend_reassign_last,
    extend_suffix,
)
from genrec_lightning.semantic_ids.io import CODES_FILE, FORMAT_VERSION, ArtifactMismatchError
from genrec_lightning.semantic_ids.prefix_index import PrefixIndex
from genrec_lightning.semantic_ids.stats import (
    collision_rate,
    filter_ratios,
    prefix_groups,
    purity_gains,
    usage_entropy,
)
from genrec_lightning.semantic_ids.table import SemanticIds
from genrec_lightning.semantic_ids.vocab import (
    BOS,
    EOS,
    NUM_SPECIAL_TOKENS,
    PAD,
    code_tokens,
    padded_token_table,
    token_offsets,
    vocab_size,
)

__all__ = [
    "BOS",
    "CODES_FILE",
    "DEDUP_METHODS",
    "EOS",
    "FORMAT_VERSION",
    "NUM_SPECIAL_TOKENS",
    "PAD",
    "ArtifactMismatchError",
    "DedupMethod",
    "PrefixIndex",
    "SemanticIds",
    "code_tokens",
    "collision_rate",
    "dedup_suffix",
    "extend_reassign_last",
    "extend_suffix",
    "filter_ratios",
    "padded_token_table",
    "prefix_groups",
    "purity_gains",
    "token_offsets",
    "usage_entropy",
    "vocab_size",
]
