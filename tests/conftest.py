"""Shared fixtures: a fast deterministic text encoder and a per-session cache of embedded ML-100K."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch

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


class ProbeModel(L.LightningModule):
    """Consumes batches as a model would, to check datamodules and the CLI inside a real Trainer loop.

    `num_items`/`pad_item` are filled by the CLI's size links from the datamodule.
    """

    def __init__(self, num_items: int = 0, pad_item: int = -1, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        assert batch["history"].shape == batch["history_mask"].shape
        assert bool((batch["history"][~batch["history_mask"]] == self.hparams.pad_item).all())
        loss = self.layer(batch["target"].float()[:, None] / max(self.hparams.num_items, 1)).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.seen += len(batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


@pytest.fixture
def hash_encoder() -> HashEncoder:
    return HashEncoder()


@pytest.fixture(scope="session")
def ml100k_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the embedded MovieLens-100K artifacts, shared by the session."""
    return tmp_path_factory.mktemp("ml100k-cache")


def python_k_core(rows: list[tuple], k: int) -> list[tuple]:
    """Reference iterative k-core over (user, item, ...) rows with plain Counters."""
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def assert_leave_one_out(dm, reference: dict) -> None:  # noqa: ANN001
    """Check a prepared datamodule's splits against `reference`: raw user -> raw items in time order.

    test target = last item, validation target = second to last (histories = the `max_history`
    items before them, padding masked), training targets = positions 1..n-3 of each sequence,
    so no training sample ever targets a validation or test position.
    """
    items = pl.read_parquet(dm.artifact_dir / "items.parquet")
    users = pl.read_parquet(dm.artifact_dir / "users.parquet")
    raw_item = dict(zip(items["item"].to_list(), items["item_raw"].to_list(), strict=True))
    raw_user = dict(zip(users["user"].to_list(), users["user_raw"].to_list(), strict=True))
    assert set(raw_user.values()) == set(reference)
    for name, offset in (("test", 1), ("val", 2)):
        split = dm.split(name)
        batch = split.batch(torch.arange(len(split)))
        assert sorted(raw_user[u] for u in batch["user"].tolist()) == sorted(reference)  # one per user
        for user, target, hist, mask in zip(
            batch["user"].tolist(),
            batch["target"].tolist(),
            batch["history"],
            batch["history_mask"],
            strict=True,
        ):
            seq = reference[raw_user[user]]
            assert raw_item[target] == seq[-offset]
            assert [raw_item[i] for i in hist[mask].tolist()] == seq[:-offset][-dm.max_history :]
            assert (hist[~mask] == dm.pad_item).all()
    train = dm.split("train").batch(torch.arange(len(dm.split("train"))))
    seen: dict = defaultdict(list)
    for user, target in zip(train["user"].tolist(), train["target"].tolist(), strict=True):
        seen[raw_user[user]].append(raw_item[target])
    for user, seq in reference.items():
        assert seen.get(user, []) == seq[1:-2]
