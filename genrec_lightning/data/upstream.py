"""What earlier stages hand a dataset: its items' semantic IDs and a teacher's item embeddings.

A `SequenceDataModule` only *declares* where these come from (`semantic_ids_from`,
`teacher_from`); `genrec_lightning.pipeline` builds or loads them and attaches an `Upstream`.
Keeping the value object here, below the pipeline, lets the data layer read what it was given
without importing (or running) anything that trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genrec_lightning.semantic_ids import SemanticIds


@dataclass(frozen=True)
class Upstream:
    """Artifacts of the stages a dataset's recommender depends on (None: not declared)."""

    #: The items' semantic IDs, checked against the dataset.
    semantic_ids: SemanticIds | None = None
    #: Directory of that semantic-ID artifact (it also holds the tokenizer weights).
    semantic_ids_dir: Path | None = None
    #: The TokenizerModule config recorded with the IDs (UniGRec rebuilds its tokenizer from it).
    tokenizer_config: dict[str, Any] | None = None
    #: A teacher's item embeddings [num_items, d] (UniGRec's distillation).
    teacher_embeddings: torch.Tensor | None = None
