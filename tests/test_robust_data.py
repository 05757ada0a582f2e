"""Robustness of data and artifacts: cache permissions, lock-free cache hits, clear errors for broken
files (naming the file and the fix), and settings refused at construction."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import HashEncoder
from safetensors.torch import save_file
from test_datamodules import _amazon_rows, _toys, _write_amazon2023
from test_readers_amazon_yelp import amazon2014_files, amazon2023_files
from test_semantic_ids import random_raw
from test_tokenizer_stage import data_of, tiny_config, write_config

import genrec_lightning.data.datamodules as datamodules
import genrec_lightning.pipeline as stages
import genrec_lightning.pipeline.tokenize as tokenize_stage
from genrec_lightning.artifacts import META_FILE, atomic_dir, read_meta, write_json_atomic
from genrec_lightning.data.datamodules import (
    AmazonDataModule,
    ItemEmbeddingDataModule,
    MovieLensDataModule,
)
from genrec_lightning.data.embeddings import SentenceTransformerEncoder
from genrec_lightning.data.readers import MalformedDataError
from genrec_lightning.errors import ConfigError, CorruptedArtifactError
from genrec_lightning.pipeline import TEACHER_FILE, load_teacher, teacher_expectation
from genrec_lightning.semantic_ids import CODES_FILE, ArtifactMismatchError, SemanticIds
from genrec_lightning.tokenizers import (
    RQVAE,
    PQKMeans,
    ProductQuantizer,
    ResidualQuantizer,
    RQKMeans,
    SoftResidualQuantizer,
)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test and restore it afterwards (it is process-wide)."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture
def toys(tmp_path: Path) -> AmazonDataModule:
    """The tiny Amazon 2023 `Toys` datamodule (6 users, 4 items) with its artifacts and embeddings built."""
    _write_amazon2023(tmp_path / "raw", *_amazon_rows())
    dm = _toys(tmp_path)
    dm.item_embeddings()
    return dm


# ------------------------------------------------------------------------------ 1. cache permissions


@pytest.mark.parametrize(
    ("mask", "dir_mode", "file_mode"),
    [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)],
    ids=["umask-022", "umask-077"],
)
def test_atomic_writes_follow_the_umask(
    tmp_path: Path, umask: Callable[[int], None], mask: int, dir_mode: int, file_mode: int
) -> None:
    """Artifacts get the modes a plain mkdir/open would give, not mkdtemp's 0700 / mkstemp's 0600, so a
    shared cache is readable by the other users the umask lets in (and stays private with 0o077)."""
    umask(mask)
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "data.bin").write_bytes(b"x")
        write_json_atomic(tmp / META_FILE, {"config": {}})
    write_json_atomic(tmp_path / "alone.json", {"a": 1})
    assert _mode(target) == dir_mode
    assert _mode(target / META_FILE) == _mode(target / "data.bin") == file_mode
    assert _mode(tmp_path / "alone.json") == file_mode


def test_cache_hit_takes_no_lock_and_writes_nothing(
    toys: AmazonDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete cache is read without its lock: a read-only cache (root is not stopped by chmod, so
    any lock attempt fails here instead) serves preprocessing, embeddings and splits."""
    cache = tmp_path / "cache"
    for lock in cache.glob(".*.lock"):
        lock.unlink()
    before = _tree(cache)

    def no_lock(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cache hit took the build lock")

    monkeypatch.setattr(datamodules, "FileLock", no_lock)
    again = _toys(tmp_path)
    assert again.build_artifacts() == toys.artifact_dir
    assert torch.equal(again.item_embeddings(), toys.item_embeddings())
    again.setup()
    assert again.num_items == 4 and len(again.split("test")) == 6
    assert ItemEmbeddingDataModule(again).embedding_dim == 8
    assert _tree(cache) == before  # no lock file, no directory


def test_semantic_ids_cache_hit_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer auto-build finds its finished entry (and the data's) without any lock."""
    cfg = tiny_config(tmp_path, "configs/tokenizers/rqkmeans.yaml")
    path = write_config(tmp_path, cfg)
    built = stages.semantic_ids_dir(path, data_of(cfg))
    cache = tmp_path / "cache"
    for lock in cache.glob(".*.lock"):
        lock.unlink()
    before = _tree(cache)

    def no_lock(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cache hit took a build lock")

    monkeypatch.setattr(datamodules, "FileLock", no_lock)
    monkeypatch.setattr(tokenize_stage, "FileLock", no_lock)
    assert stages.build_semantic_ids(path, data_of(cfg)).num_items == data_of(cfg).num_items
    assert stages.semantic_ids_dir(path, data_of(cfg)) == built
    assert _tree(cache) == before


# -------------------------------------------------------------------- 2. broken files name themselves


def test_truncated_gz_raw_file_says_download_again(tmp_path: Path) -> None:
    """A cut-off download is a MalformedDataError naming the file, not a bare EOFError from gzip."""
    reader = amazon2023_files(tmp_path)
    data = reader.reviews_file.read_bytes()
    reader.reviews_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    assert (
        str(err.value) == f"{reader.reviews_file} is truncated (not a complete gzip file): download it again"
    )


def test_non_gzip_raw_file_says_download_again(tmp_path: Path) -> None:
    """A `.gz` name on something else (an HTML error page, say) names the file and the fix."""
    reader = amazon2014_files(tmp_path)
    reader.meta_file.write_text("<html>not found</html>")
    with pytest.raises(
        MalformedDataError, match=r"meta_Beauty\.json\.gz is not a gzip file .*download it again"
    ):
        reader.read()


@pytest.mark.parametrize("content", ["{truncated", "[1, 2]", "\xff\xfe"])
def test_invalid_meta_json_is_a_corrupted_artifact(tmp_path: Path, content: str) -> None:
    """A meta.json that is not a JSON object names itself and says how to rebuild."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / META_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(CorruptedArtifactError) as err:
        read_meta(tmp_path / "a")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'a' / META_FILE} ")
    assert message.endswith(f": delete the directory {tmp_path / 'a'} and it is rebuilt on the next run")


def test_invalid_meta_json_of_the_data_cache(toys: AmazonDataModule, tmp_path: Path) -> None:
    (toys.artifact_dir / META_FILE).write_text('{"config": ')
    with pytest.raises(CorruptedArtifactError, match=r"meta\.json is not valid JSON .*delete the directory"):
        _toys(tmp_path).build_artifacts()


def test_truncated_parquet_artifact_says_delete_to_rebuild(toys: AmazonDataModule, tmp_path: Path) -> None:
    """polars' ComputeError becomes a CorruptedArtifactError that names the file and the directory."""
    path = toys.artifact_dir / "interactions.parquet"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorruptedArtifactError) as err:
        _toys(tmp_path).setup()
    message = str(err.value)
    assert message.startswith(f"{path} cannot be read (")
    assert message.endswith(f"delete the directory {toys.artifact_dir} and it is rebuilt on the next run")


def test_truncated_embeddings_say_delete_to_rebuild(toys: AmazonDataModule, tmp_path: Path) -> None:
    path = toys.embedding_dir() / "embeddings.npy"
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(
        CorruptedArtifactError, match=r"embeddings\.npy cannot be read .*delete the directory"
    ):
        _toys(tmp_path).item_embeddings()


def _saved_ids(tmp_path: Path) -> Path:
    return SemanticIds.from_codes(random_raw(20, [3, 3], seed=1), 3).save(
        tmp_path / "sid", {"dataset": "toy"}
    )


def _edit_meta(directory: Path, **changes: Any) -> None:
    meta = json.loads((directory / META_FILE).read_text())
    (directory / META_FILE).write_text(json.dumps(meta | changes))


@pytest.mark.parametrize("delta", [-1, 1])
def test_edited_codebook_sizes_say_modified_after_written(tmp_path: Path, delta: int) -> None:
    """meta.json is checked against the checksummed table: a smaller size used to read as a request to
    pass a larger codebook, a larger one was accepted silently (a wrong vocabulary)."""
    out = _saved_ids(tmp_path)
    sizes = read_meta(out)["codebook_sizes"]
    _edit_meta(out, codebook_sizes=[sizes[0] + delta, *sizes[1:]])
    with pytest.raises(ArtifactMismatchError) as err:
        SemanticIds.load(out)
    message = str(err.value)
    assert f"semantic ID artifact {out} is corrupted or was modified after it was written" in message
    assert "codebook_sizes" in message and f"delete {out}" in message
    assert "pass a codebook size" not in message


def test_edited_codebook_sizes_of_an_artifact_without_header(tmp_path: Path) -> None:
    """Artifacts written before the table description entered the file header are checked against
    the tensors themselves."""
    out = _saved_ids(tmp_path)
    codes = SemanticIds.load(out)
    save_file({"codes": codes.codes, "raw_codes": codes.raw_codes}, str(out / CODES_FILE))  # no header
    _edit_meta(out, sha256=hashlib.sha256((out / CODES_FILE).read_bytes()).hexdigest())
    assert SemanticIds.load(out).equal(codes)
    _edit_meta(out, codebook_sizes=[2, *codes.codebook_sizes[1:]])
    with pytest.raises(ArtifactMismatchError, match="corrupted or was modified after it was written"):
        SemanticIds.load(out)
    _edit_meta(out, codebook_sizes=[*codes.codebook_sizes, 4])
    with pytest.raises(ArtifactMismatchError, match=r"modified after it was written \(meta.json describes"):
        SemanticIds.load(out)


def test_artifact_of_another_dataset_is_kept_and_the_config_pointed_elsewhere(tmp_path: Path) -> None:
    """A valid artifact of another dataset is not the problem: the message never says to delete it."""
    out = _saved_ids(tmp_path)
    with pytest.raises(ArtifactMismatchError) as err:
        SemanticIds.load(out, expect={"dataset": "beauty"})
    message = str(err.value)
    assert "built for another dataset/config" in message and "delete" not in message
    assert message.endswith(
        "point `semantic_ids_from` at this dataset's semantic-ID artifact, or at the tokenizer YAML "
        "(e.g. configs/rqvae.yaml), which builds this dataset's own entry"
    )


def test_teacher_of_another_dataset_is_kept_and_the_config_pointed_elsewhere(
    toys: AmazonDataModule, tmp_path: Path
) -> None:
    directory = tmp_path / "teacher"
    directory.mkdir()
    save_file({"item_embeddings": torch.zeros(toys.num_items, 4)}, str(directory / TEACHER_FILE))
    write_json_atomic(directory / META_FILE, {**teacher_expectation(toys), "data_hash": "other"})
    with pytest.raises(ArtifactMismatchError) as err:
        load_teacher(directory, toys)
    message = str(err.value)
    assert "built for another dataset/split" in message and "delete" not in message
    assert message.endswith(
        "point `teacher_from` at this dataset's teacher artifact, or at the teacher YAML "
        "(e.g. configs/sasrec.yaml), which trains this dataset's own entry"
    )
    write_json_atomic(directory / META_FILE, teacher_expectation(toys))
    save_file({"item_embeddings": torch.zeros(2, 4)}, str(directory / TEACHER_FILE))
    with pytest.raises(ArtifactMismatchError, match="teacher artifact .* is corrupted or was modified"):
        load_teacher(directory, toys)


# ------------------------------------------------------------------ 3. settings refused at construction


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"eval_batch_size": -4}, "eval_batch_size must be >= 1, got -4"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ({"max_history": 0}, "max_history must be >= 1, got 0"),
    ],
)
def test_datamodule_loader_settings_are_checked_at_construction(
    tmp_path: Path, setting: dict[str, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=f"MovieLensDataModule: {match}"):
        MovieLensDataModule(cache_dir=str(tmp_path / "cache"), encoder=HashEncoder(), **setting)
    assert not (tmp_path / "cache").exists()  # refused before anything was built


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"num_workers": -2}, "num_workers must be >= 0"),
    ],
)
def test_item_embedding_loader_settings_are_checked_at_construction(
    tmp_path: Path, setting: dict[str, int], match: str
) -> None:
    data = MovieLensDataModule(cache_dir=str(tmp_path / "cache"), encoder=HashEncoder())
    with pytest.raises(ConfigError, match=f"ItemEmbeddingDataModule: {match}"):
        ItemEmbeddingDataModule(data, **setting)
    assert not (tmp_path / "cache").exists()


def test_encoder_batch_size_is_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="encoder batch_size must be >= 1, got 0"):
        SentenceTransformerEncoder(batch_size=0)


TOKENIZERS: dict[str, Callable[..., Any]] = {
    "RQKMeans": partial(RQKMeans, 8),
    "PQKMeans": partial(PQKMeans, 8),
    "ResidualQuantizer": partial(ResidualQuantizer, 8),
    "SoftResidualQuantizer": partial(SoftResidualQuantizer, 8),
    "ProductQuantizer": partial(ProductQuantizer, 8),
}


@pytest.mark.parametrize("name", TOKENIZERS)
def test_codebook_of_one_code_is_refused(name: str) -> None:
    """One code per level gives every item the same token (collision rate ~1): refuse it up front."""
    with pytest.raises(ConfigError, match=f"{name}: codebook_size must be >= 2, got 1"):
        TOKENIZERS[name](num_levels=2, codebook_size=1)
    with pytest.raises(ConfigError, match=f"{name}: num_levels must be >= 1, got 0"):
        TOKENIZERS[name](num_levels=0, codebook_size=4)
    assert TOKENIZERS[name](num_levels=2, codebook_size=2).codebook_size == 2


def test_rqvae_refuses_a_quantizer_with_one_code() -> None:
    quantizer = partial(ResidualQuantizer, num_levels=2, codebook_size=1)
    with pytest.raises(ConfigError, match="ResidualQuantizer: codebook_size must be >= 2"):
        RQVAE(8, hidden_dims=[8], latent_dim=4, quantizer=quantizer)
