"""Shared fixtures: a fast deterministic text encoder and a per-session cache of embedded ML-100K."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from genrec_lightning.data.embeddings import SentenceTransformerEncoder


class HashEncoder(SentenceTransformerEncoder):
    """Deterministic text -> vector map (a stand-in for the real model where its quality is irrelevant).

    Counts how often it encodes, so tests can tell a cache hit from a rebuild.
    """

    def __init__(self, dim: int = 8, model: str = "hash-encoder", nan_rows: tuple[int, ...] = ()) -> None:
        super().__init__(model=model, show_progress=False)
        self.dim = dim
        self.nan_rows = nan_rows
        self.calls = 0

    def config(self) -> dict:
        return {**super().config(), "dim": self.dim}

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.stack(
            [
                np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], dtype=np.uint8).astype(
                    np.float32
                )
                for t in texts
            ]
        )
        out[list(self.nan_rows)] = np.nan
        return out


@pytest.fixture
def hash_encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def ml100k_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the embedded MovieLens-100K artifacts, shared by the session."""
    return tmp_path_factory.mktemp("ml100k-cache")
