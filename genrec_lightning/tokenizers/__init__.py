"""Item tokenizers: item embeddings [N, d] -> semantic IDs [N, L] (plain torch + faiss).

Trainable: `RQVAE` with a pluggable quantizer (`ResidualQuantizer`, `SoftResidualQuantizer`,
`ProductQuantizer`). Training-free: `RQKMeans`, `PQKMeans`. All satisfy the `Tokenizer` protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from genrec_lightning.tokenizers.kmeans import PQKMeans, RQKMeans, kmeans, nearest, squared_distances
from genrec_lightning.tokenizers.quantizers import (
    ProductQuantizer,
    Quantizer,
    QuantizerOutput,
    ResidualQuantizer,
    SoftResidualQuantizer,
    uniformity_loss,
)
from genrec_lightning.tokenizers.rqvae import MLP, RQVAE, RQVAEOutput


@runtime_checkable
class Tokenizer(Protocol):
    """What the semantic-ID stage needs from a tokenizer: sizes, whether it trains, and hard IDs."""

    num_levels: int
    codebook_size: int
    trainable: bool

    def encode(self, x: Tensor) -> Tensor:
        """Hard codes [N, num_levels] (long, in [0, codebook_size)) of item embeddings x [N, d]."""
        ...


__all__ = [
    "MLP",
    "PQKMeans",
    "ProductQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "RQKMeans",
    "RQVAE",
    "RQVAEOutput",
    "ResidualQuantizer",
    "SoftResidualQuantizer",
    "Tokenizer",
    "kmeans",
    "nearest",
    "squared_distances",
    "uniformity_loss",
]
