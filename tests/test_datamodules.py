"""Datamodules end to end: figures against independent counts, splits, caching, bad input."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch
from conftest import HashEncoder, ProbeModel, assert_leave_one_out, python_k_core

from genrec_lightning.artifacts import META_FILE
from genrec_lightning.data.datamodules import AmazonDataModule, ItemEmbeddingDataModule, MovieLensDataModule
from genrec_lightning.data.preprocess import EmptyDatasetError
from genrec_lightning.data.readers import MovieLens100K
from genrec_lightning.semantic_ids.table import SemanticIds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ml100k(ml100k_cache: Path) -> MovieLensDataModule:
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder())
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def ml100k_reference() -> dict[int, list[int]]:
    """Each user's 5-core items in time order (ties by file order), computed without our pipeline."""
    frame = MovieLens100K().read().interactions
    rows = list(
        zip(frame["user"].to_list(), frame["item"].to_list(), frame["timestamp"].to_list(), strict=True)
    )
    indexed = [(u, i, t, n) for n, (u, i, t) in enumerate(dict.fromkeys(rows))]  # dedup keeps first
    core = python_k_core(indexed, 5)
    per_user: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for u, i, t, n in core:
        per_user[u].append((t, n, i))
    return {u: [i for _, _, i in sorted(v)] for u, v in per_user.items()}


def test_ml100k_statistics_match_independent_count(ml100k: MovieLensDataModule, ml100k_reference) -> None:
    stats = ml100k.statistics()
    assert stats["raw"] == {"interactions": 100_000, "users": 943, "items": 1682}
    n = sum(len(v) for v in ml100k_reference.values())
    items = {i for v in ml100k_reference.values() for i in v}
    assert stats["interactions"] == n
    assert stats["users"] == len(ml100k_reference)
    assert stats["items"] == len(items) == ml100k.num_items
    assert stats["history_mean_length"] == pytest.approx(n / len(ml100k_reference))
    assert stats["train_samples"] == sum(len(v) - 3 for v in ml100k_reference.values())


def test_ml100k_splits_are_leave_one_out(ml100k: MovieLensDataModule, ml100k_reference) -> None:
    assert_leave_one_out(ml100k, ml100k_reference)


def test_cache_is_reused_and_rebuilt_on_config_change(
    ml100k_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder())
    directory = first.build_artifacts()
    stamp = (directory / "interactions.parquet").stat().st_mtime_ns
    again = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder())
    assert again.build_artifacts() == directory
    assert (directory / "interactions.parquet").stat().st_mtime_ns == stamp  # reused, not rewritten

    other = MovieLensDataModule(cache_dir=str(ml100k_cache), min_item_interactions=10, encoder=HashEncoder())
    assert other.build_artifacts() != directory
    assert other.num_items < first.num_items

    meta = json.loads((directory / META_FILE).read_text())
    meta["config"]["min_user_interactions"] = 3  # an artifact built from another config at this path
    (directory / META_FILE).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        rebuilt = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder())
        rebuilt.build_artifacts()
    assert "built from another config" in caplog.text
    assert json.loads((directory / META_FILE).read_text())["config"]["min_user_interactions"] == 5


def test_embeddings_are_cached_per_encoder(ml100k_cache: Path) -> None:
    encoder = HashEncoder(dim=8)
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=encoder)
    vectors = dm.item_embeddings()
    assert vectors.shape == (dm.num_items, 8) and vectors.dtype == torch.float32
    dm.item_embeddings()
    assert encoder.calls == 1
    wider = HashEncoder(dim=16)
    assert MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=wider).item_embeddings().shape[1] == 16
    assert wider.calls == 1


def test_nan_embeddings_are_refused_before_writing(ml100k_cache: Path) -> None:
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder(dim=4, nan_rows=(3,)))
    with pytest.raises(ValueError, match=r"NaN/inf in 1 row\(s\) \(first: \[3\]\)"):
        dm.item_embeddings()
    assert not dm.embedding_dir().exists()


def test_wrong_embedding_shape_is_refused(ml100k_cache: Path) -> None:
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder(dim=5))
    directory = dm.build_embeddings()
    np.save(directory / "embeddings.npy", np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"has shape \(3, 5\)"):
        dm.item_embeddings()


def test_empty_after_k_core_names_the_filter(ml100k_cache: Path) -> None:
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), min_user_interactions=800, encoder=HashEncoder())
    with pytest.raises(EmptyDatasetError, match=r"user filter \(>= 800"):
        dm.prepare_data()
    assert not dm.artifact_dir.exists()


def _write_amazon2023(root: Path, reviews: list[dict], meta: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("Toys.jsonl.gz", reviews), ("meta_Toys.jsonl.gz", meta)):
        with gzip.open(root / name, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _amazon_rows() -> tuple[list[dict], list[dict]]:
    reviews = [
        {
            "user_id": f"U{u}",
            "parent_asin": f"P{(u + k) % 4}",
            "timestamp": 1_600_000_000_000 + 1000 * (u * 10 + k),
        }
        for u in range(6)
        for k in range(4)
    ]
    meta = [
        {"parent_asin": "P0", "title": "Red guitar", "store": "Acme", "categories": ["Music", "Guitars"]},
        {"parent_asin": "P1", "title": "Drum", "store": None, "categories": [], "description": ["Loud."]},
        {"parent_asin": "P2", "title": "", "store": None, "categories": []},  # no text at all
    ]  # P3 has no metadata row
    return reviews, meta


def _toys(tmp_path: Path, **overrides: object) -> AmazonDataModule:
    """The Amazon 2023 `Toys` fixture's datamodule with 3-core filtering."""
    kwargs = dict(
        category="Toys", version="2023", root=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache")
    )
    kwargs |= dict(min_user_interactions=3, min_item_interactions=3, encoder=HashEncoder())
    return AmazonDataModule(**(kwargs | overrides))


def test_amazon2023_pipeline_with_text_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reviews, meta = _amazon_rows()
    _write_amazon2023(tmp_path / "raw", reviews, meta)
    dm = _toys(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert "2 item(s) have no text" in caplog.text
    stats = dm.statistics()
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 4, 24)
    assert stats["fallback_texts"] == 2
    texts = dict(pl.read_parquet(dm.artifact_dir / "items.parquet").select("item_raw", "text").iter_rows())
    assert texts["P0"] == "Title: Red guitar; Store: Acme; Categories: Music, Guitars"
    assert texts["P1"] == "Title: Drum; Description: Loud."
    assert texts["P2"] == "Item P2" and texts["P3"] == "Item P3"
    batch = next(iter(dm.train_dataloader()))
    assert batch["history"].dtype == torch.long and batch["history"].shape[1] == dm.max_history

    strict = _toys(tmp_path, missing_text="error", cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match=r"2 item\(s\) have no text .*P2"):
        strict.prepare_data()


def test_changed_raw_file_rebuilds(tmp_path: Path) -> None:
    reviews, meta = _amazon_rows()
    _write_amazon2023(tmp_path / "raw", reviews, meta)
    before = _toys(tmp_path).build_artifacts()
    _write_amazon2023(tmp_path / "raw", reviews[:-1] + [dict(reviews[-1], timestamp=1)], meta)
    assert _toys(tmp_path).build_artifacts() != before


def test_data_identity_is_the_file_bytes_not_their_time_or_place(tmp_path: Path) -> None:
    """A reinstall or copy stamps new mtimes on the same bytes: the dataset must stay the same."""
    reviews, meta = _amazon_rows()
    _write_amazon2023(tmp_path / "raw", reviews, meta)
    first = _toys(tmp_path)
    before = first.build_artifacts()
    for f in (tmp_path / "raw").iterdir():
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert _toys(tmp_path).data_hash == first.data_hash
    shutil.copytree(tmp_path / "raw", tmp_path / "elsewhere" / "raw")
    moved = _toys(tmp_path / "elsewhere", cache_dir=str(tmp_path / "cache"))
    assert moved.build_artifacts() == before
    reviews[0]["timestamp"] += 1  # other content: another dataset
    _write_amazon2023(tmp_path / "raw", reviews, meta)
    assert _toys(tmp_path).data_hash != first.data_hash


def test_committed_semantic_ids_belong_to_the_embedded_data(ml100k: MovieLensDataModule) -> None:
    """docs/results/ids is pinned by the experiment runner on any machine, so it must load on this one."""
    ids = SemanticIds.load(
        ROOT / "docs/results/ids/ml100k_rqvae_4x256", expect=ml100k.semantic_ids_expectation()
    )
    assert ids.codes.shape == (ml100k.num_items, 4)


def test_datamodule_in_trainer(ml100k: MovieLensDataModule, tmp_path: Path) -> None:
    probe = ProbeModel(num_items=ml100k.num_items, pad_item=ml100k.pad_item)
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1.0,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=ml100k)
    assert probe.seen == ml100k.num_users  # every validation user exactly once


def test_item_embedding_datamodule(ml100k_cache: Path) -> None:
    inner = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder(dim=6))
    dm = ItemEmbeddingDataModule(inner, batch_size=100)
    dm.prepare_data()
    dm.setup()
    assert dm.embedding_dim == 6 and dm.num_items == inner.num_items
    ids = torch.cat([b["item"] for b in dm.val_dataloader()])
    assert torch.equal(ids, torch.arange(inner.num_items))
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["embedding"], dm.embeddings[batch["item"]])
