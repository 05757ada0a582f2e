"""LightningDataModules: one per dataset for the recommender stage, one wrapper for the tokenizer stage.

`SequenceDataModule` owns the way from raw files to tensors; a subclass only says which
reader to use. Data never trains anything: a datamodule declares where its items' semantic IDs
and teacher come from (`semantic_ids_from`, `teacher_from`) and reads them once
`genrec_lightning.pipeline.attach_upstream` has built or loaded them (`genrec` does this right
after the datamodule is created).

Artifacts are cached under `cache_dir/<dataset>/<config hash>/` and built once, under a file
lock, by whichever process needs them first (global rank 0 in `prepare_data`, or any process
that reads a size property for `link_arguments` before that); the others wait and load the
finished files. A complete artifact is found without the lock, so a read-only cache (shared, or
on a read-only mount) serves every run that needs nothing new.
"""

from __future__ import annotations

import logging
import os
import warnings
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from genrec_lightning.artifacts import (
    atomic_dir,
    config_hash,
    corrupted_artifact,
    is_valid_artifact,
    read_meta,
    write_json_atomic,
)
from genrec_lightning.data import preprocess as pp
from genrec_lightning.data.datasets import (
    EpochShuffleSampler,
    ItemEmbeddings,
    ResumableLoader,
    SequenceSamples,
    UnpaddedDistributedSampler,
    collate_batch,
)
from genrec_lightning.data.embeddings import SentenceTransformerEncoder, check_finite
from genrec_lightning.data.readers import (
    Amazon2014,
    Amazon2023,
    DatasetReader,
    MovieLens1M,
    MovieLens100K,
    Yelp,
    build_item_text,
)
from genrec_lightning.data.upstream import Upstream
from genrec_lightning.errors import ConfigError, RunError
from genrec_lightning.semantic_ids import SemanticIds

log = logging.getLogger(__name__)

#: Bump when the artifact layout or preprocessing semantics change, so old caches are rebuilt.
FORMAT_VERSION = 1
SEQUENCE_FILES = ("interactions.parquet", "items.parquet", "users.parquet")
EMBEDDING_FILES = ("embeddings.npy",)


def check_minimum(owner: str, minimum: int, **settings: int) -> None:
    """Refuse counts below `minimum` at construction, before any stage runs (a DataLoader or the
    k-core filter would only complain after the expensive preprocessing and encoding)."""
    for name, value in settings.items():
        if value < minimum:
            raise ConfigError(
                f"{owner}: {name} must be >= {minimum}, got {value}; set it to {minimum} or more"
            )


def _read_parquet(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A parquet file of a cached artifact; a truncated or garbled one names itself and the fix."""
    try:
        return pl.read_parquet(path, columns=columns)
    except pl.exceptions.PolarsError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise corrupted_artifact(path, path.parent, f"cannot be read ({reason})") from err


def _distributed_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _batches_done_this_epoch(trainer: L.Trainer | None) -> int:
    """Training batches of the current epoch already run before the checkpoint being resumed.

    Non-zero only while Lightning restores a checkpoint written inside an epoch (preemption, a
    step-based save): the epoch has started but not finished, and the batch counter says how far
    it got. Read when an epoch's iteration starts: Lightning may build the loader (to estimate
    the number of steps) before it restores the checkpoint's progress.
    """
    loop = getattr(trainer, "fit_loop", None)
    if loop is None or not loop.restarting:
        return 0
    epochs = loop.epoch_progress.total
    if not (epochs.started == epochs.ready and epochs.processed == epochs.started - 1):
        return 0
    return int(loop.epoch_loop.batch_progress.current.processed)


def training_loader(
    dataset: Dataset, batch_size: int, num_workers: int, trainer: L.Trainer | None
) -> ResumableLoader:
    """Shuffled training batches in an order set by (run seed, epoch), sharded over ranks, starting
    after the batches that a mid-epoch checkpoint already trained on (exact resume)."""
    world, rank = _distributed_world()
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # seed_everything's; Lightning's DDP sampler reads it too
    sampler = EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=seed)
    sampler.skip_next(lambda: _batches_done_this_epoch(trainer) * batch_size)
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Each new iterator draws a worker base seed from this generator instead of the global
        # RNG, so starting an epoch does not shift the dropout stream a resumed run restores.
        generator=torch.Generator().manual_seed(seed + rank),
        collate_fn=collate_batch,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def _renamed(owner: str, old: str, old_value: str | None, new: str, value: str | None) -> str | None:
    """Accept an option under its former name (the saved config of an older run), with a warning."""
    if old_value is None:
        return value
    if value is not None and value != old_value:
        raise ConfigError(f"{owner}: both {old} and {new} are set; keep only {new}")
    warnings.warn(
        f"{owner}: `{old}` is now called `{new}`; rename it in your config", FutureWarning, stacklevel=3
    )
    return old_value


class SequenceDataModule(L.LightningDataModule, ABC):
    """Leave-one-out (history, target) samples of one dataset, with item texts and embeddings."""

    def __init__(
        self,
        min_user_interactions: int = 5,
        min_item_interactions: int = 5,
        max_history: int = 20,
        text_fields: list[str] | None = None,
        missing_text: Literal["fallback", "error"] = "fallback",
        encoder: SentenceTransformerEncoder | None = None,
        cache_dir: str = "data/cache",
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        semantic_ids_from: str | None = None,
        teacher_from: str | None = None,
        tokenizer: str | None = None,
        teacher: str | None = None,
    ) -> None:
        """
        Args:
            min_user_interactions: iterative k-core threshold for users (paper: 5).
            min_item_interactions: iterative k-core threshold for items (paper: 5).
            max_history: most recent items kept as history (paper: 20); older ones are dropped.
            text_fields: metadata fields joined into the item text (None: the dataset's defaults).
            missing_text: items with no text get "Item <raw id>" and are counted (`fallback`),
                or stop the run with an error listing them (`error`).
            encoder: text encoder for item embeddings (default: embedded all-MiniLM-L6-v2).
            cache_dir: where preprocessed and embedding artifacts are cached.
            batch_size: training batch size (per process).
            eval_batch_size: validation/test/predict batch size (per process).
            num_workers: DataLoader worker processes (batches are built by tensor gathers, so 0
                is usually fastest).
            semantic_ids_from: where the items' semantic IDs come from: a tokenizer config (e.g.
                `configs/rqvae.yaml`; the pipeline reuses its artifact for this dataset from the
                cache or builds it first) or a semantic-ID artifact directory. None: no IDs
                (ID-based models such as SASRec).
            teacher_from: UniGRec's collaborative teacher: a teacher config (e.g.
                `configs/sasrec.yaml`, trained on this dataset's training split on first use,
                then cached) or a teacher artifact directory (item embeddings + meta.json).
                None: no teacher.
            tokenizer: deprecated name of `semantic_ids_from` (configs of older runs).
            teacher: deprecated name of `teacher_from` (configs of older runs).
        """
        super().__init__()
        owner = type(self).__name__
        check_minimum(
            owner,
            1,
            min_user_interactions=min_user_interactions,
            min_item_interactions=min_item_interactions,
            max_history=max_history,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
        )
        check_minimum(owner, 0, num_workers=num_workers)
        self.min_user_interactions = min_user_interactions
        self.min_item_interactions = min_item_interactions
        self.max_history = max_history
        self.missing_text = missing_text
        self.encoder = encoder if encoder is not None else SentenceTransformerEncoder()
        self.cache_dir = Path(cache_dir).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.prepare_data_per_node = False  # artifacts are built once, by global rank 0
        self.reader = self.build_reader()
        self.text_fields = (
            list(text_fields) if text_fields is not None else list(self.reader.default_text_fields)
        )
        self.semantic_ids_from = _renamed(
            owner, "tokenizer", tokenizer, "semantic_ids_from", semantic_ids_from
        )
        self.teacher_from = _renamed(owner, "teacher", teacher, "teacher_from", teacher_from)
        self._upstream: Upstream | None = None
        self._splits: dict[str, SequenceSamples] = {}
        self._sequences: pp.Sequences | None = None

    @abstractmethod
    def build_reader(self) -> DatasetReader:
        """The reader of this dataset's raw files, from the subclass's constructor arguments."""

    # ----------------------------------------------------------------------------- artifacts
    def preprocess_config(self) -> dict[str, Any]:
        """Everything that determines the preprocessed artifact."""
        return {
            "format": FORMAT_VERSION,
            "source": self.reader.config(),
            "min_user_interactions": self.min_user_interactions,
            "min_item_interactions": self.min_item_interactions,
            "text_fields": self.text_fields,
            "missing_text": self.missing_text,
        }

    @cached_property
    def data_hash(self) -> str:
        """Hash of the preprocessing config: the identity of this dataset version in the cache."""
        return config_hash(self.preprocess_config())

    @cached_property
    def artifact_dir(self) -> Path:
        """Directory of the preprocessed artifact for the current configuration."""
        self.reader.check_files()
        return self.cache_dir / self.reader.name / self.data_hash

    def _lock(self) -> FileLock:
        """The cache's build lock; taken only when something must be built (it writes a lock file)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.cache_dir / f".{self.reader.name}.lock"))

    def build_artifacts(self) -> Path:
        """Build the preprocessed artifact unless a valid one for this config exists; return its dir.

        A complete artifact is returned before the lock is taken, so a cache hit writes nothing.
        """
        target = self.artifact_dir
        config = self.preprocess_config()
        if is_valid_artifact(target, config, SEQUENCE_FILES):
            return target
        with self._lock():
            if is_valid_artifact(target, config, SEQUENCE_FILES):
                return target
            if target.exists():
                log.warning("Cached artifact %s was built from another config; rebuilding", target)
            log.info("Preprocessing %s into %s", self.reader.name, target)
            frames, meta = self._preprocess()
            with atomic_dir(target) as tmp:
                for name, frame in frames.items():
                    frame.write_parquet(tmp / name)
                write_json_atomic(tmp / "meta.json", {"config": config, **meta})
        return target

    def _preprocess(self) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
        raw = self.reader.read()
        raw_stats = {
            "interactions": raw.interactions.height,
            "users": raw.interactions["user"].n_unique(),
            "items": raw.interactions["item"].n_unique(),
        }
        deduped = pp.deduplicate(raw.interactions.lazy()).collect(engine="streaming")
        core = pp.k_core(deduped, self.min_user_interactions, self.min_item_interactions)
        short = core.filter(pl.len().over("user") < 3)
        if short.height:
            log.warning(
                "Dropping %d users with fewer than 3 interactions (leave-one-out needs 3)",
                short["user"].n_unique(),
            )
            core = core.filter(pl.len().over("user") >= 3)
            if core.height == 0:
                raise pp.EmptyDatasetError("no user has the 3 interactions leave-one-out needs")
        ordered, users, items = pp.index_and_order(core)
        items = self._item_text(items, raw.items)
        seqs = pp.to_sequences(ordered, users.height)
        stats = pp.statistics(seqs, items.height)
        splits = pp.leave_one_out(seqs)
        stats |= {f"{name}_samples": len(split) for name, split in splits.items()}
        stats["fallback_texts"] = int(items["text_is_fallback"].sum())
        meta = {"raw": raw_stats, "deduplicated": deduped.height, "stats": stats}
        return {"interactions.parquet": ordered, "items.parquet": items, "users.parquet": users}, meta

    def _item_text(self, items: pl.DataFrame, metadata: pl.DataFrame) -> pl.DataFrame:
        """Attach item text built from `text_fields`; apply and report the missing-text fallback."""
        meta = metadata.unique(subset="item", keep="first", maintain_order=True).rename({"item": "item_raw"})
        joined = items.join(meta, on="item_raw", how="left", maintain_order="left")
        text = build_item_text(joined, self.text_fields)
        missing = text.is_null()
        if missing.any():
            raw_ids = joined.filter(missing)["item_raw"]
            if self.missing_text == "error":
                raise ValueError(
                    f"{len(raw_ids)} item(s) have no text in fields {self.text_fields} "
                    f"(e.g. {raw_ids.head(5).to_list()}); add metadata, choose other text_fields, "
                    "or set missing_text: fallback"
                )
            log.warning(
                "%d item(s) have no text in %s; using 'Item <id>' instead (e.g. %s)",
                len(raw_ids),
                self.text_fields,
                raw_ids.head(5).to_list(),
            )
        fallback = pl.lit("Item ") + pl.col("item_raw").cast(pl.String)
        return joined.select(
            "item",
            "item_raw",
            pl.when(missing).then(fallback).otherwise(text).alias("text"),
            missing.alias("text_is_fallback"),
        )

    def embedding_config(self) -> dict[str, Any]:
        return {"data": config_hash(self.preprocess_config()), "encoder": self.encoder.config()}

    def embedding_dir(self) -> Path:
        return self.artifact_dir / "embeddings" / config_hash(self.embedding_config())

    def build_embeddings(self) -> Path:
        """Encode every item text once (cached per data config and encoder); return the directory."""
        data_dir = self.build_artifacts()
        target = self.embedding_dir()
        config = self.embedding_config()
        if is_valid_artifact(target, config, EMBEDDING_FILES):  # a cache hit writes nothing
            return target
        with self._lock():
            if is_valid_artifact(target, config, EMBEDDING_FILES):
                return target
            texts = _read_parquet(data_dir / "items.parquet", columns=["text"])["text"].to_list()
            log.info("Encoding %d item texts with %s", len(texts), self.encoder.model)
            vectors = np.asarray(self.encoder.encode(texts), dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(texts):
                raise ValueError(f"encoder returned shape {vectors.shape} for {len(texts)} texts")
            check_finite(vectors, f"embeddings from {self.encoder.model}")
            with atomic_dir(target) as tmp:
                np.save(tmp / "embeddings.npy", vectors)
                meta = {"config": config, "num_items": len(texts), "dim": int(vectors.shape[1])}
                write_json_atomic(tmp / "meta.json", meta)
        return target

    def item_embeddings(self) -> torch.Tensor:
        """Item embeddings `[num_items, dim]` (float32), built if missing; checked for NaN/inf."""
        directory = self.build_embeddings()
        path = directory / "embeddings.npy"
        try:
            vectors = np.load(path)
        except (ValueError, EOFError) as err:  # truncated data or header
            raise corrupted_artifact(path, directory, f"cannot be read ({err})") from err
        if vectors.ndim != 2 or vectors.shape[0] != self.num_items:
            raise corrupted_artifact(
                path, directory, f"has shape {vectors.shape}, expected ({self.num_items}, dim)"
            )
        check_finite(vectors, f"{directory}/embeddings.npy")
        return torch.from_numpy(vectors)

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The artifact's `meta.json` (built first if missing); read once per datamodule."""
        meta = read_meta(self.build_artifacts())
        assert meta is not None
        return meta

    @property
    def num_items(self) -> int:
        """Number of items after filtering (dense ids 0..num_items-1)."""
        return int(self.meta["stats"]["items"])

    @property
    def num_users(self) -> int:
        return int(self.meta["stats"]["users"])

    @property
    def pad_item(self) -> int:
        """Id used to pad histories (= num_items, out of range on purpose)."""
        return self.num_items

    def statistics(self) -> dict[str, Any]:
        """Raw and filtered figures (the paper's Table 2 and split sizes)."""
        meta = self.meta
        return {"dataset": self.reader.name, "raw": meta["raw"], **meta["stats"]}

    def id_maps(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(user, user_raw) and (item, item_raw): the dataset's own ids of the dense indices."""
        directory = self.build_artifacts()
        users = _read_parquet(directory / "users.parquet", columns=["user", "user_raw"])
        items = _read_parquet(directory / "items.parquet", columns=["item", "item_raw"])
        return users, items

    def item_frequencies(self) -> torch.Tensor:
        """Interactions per item `[num_items]` in the training part (all but each user's last two)."""
        seqs = self._load_sequences()
        lengths = np.diff(seqs.offsets)
        position = np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], lengths)
        in_train = position < np.repeat(lengths - 2, lengths)
        counts = np.bincount(seqs.items[in_train], minlength=self.num_items)
        return torch.from_numpy(counts.astype(np.float64))

    # ------------------------------------------------------------------------- semantic IDs
    def semantic_ids_dir(self, key: str) -> Path:
        """Cache entry of the semantic IDs built for this dataset by the tokenizer config `key`."""
        return self.artifact_dir / "semantic_ids" / key

    def semantic_ids_expectation(self) -> dict[str, Any]:
        """What a semantic-ID artifact's meta must say to belong to this dataset."""
        return {"dataset": self.reader.name, "data_hash": self.data_hash, "num_items": self.num_items}

    # ---------------------------------------------------------------- upstream artifacts
    @property
    def needs_upstream(self) -> bool:
        """Whether this dataset declares semantic IDs or a teacher that must be attached first."""
        return self.semantic_ids_from is not None or self.teacher_from is not None

    def attach(self, upstream: Upstream) -> None:
        """Receive what the pipeline built or loaded for `semantic_ids_from` / `teacher_from`."""
        if (upstream.semantic_ids is None) != (self.semantic_ids_from is None):
            raise ValueError("the attached semantic IDs do not match the declared semantic_ids_from")
        if (upstream.teacher_embeddings is None) != (self.teacher_from is None):
            raise ValueError("the attached teacher does not match the declared teacher_from")
        self._upstream = upstream

    def _attached(self) -> Upstream:
        """The attached artifacts; empty when nothing is declared, an error when not yet attached."""
        if self._upstream is not None:
            return self._upstream
        if self.needs_upstream:
            raise RunError(
                f"{type(self).__name__} declares semantic_ids_from/teacher_from but nothing built them "
                "yet: call genrec_lightning.pipeline.attach_upstream(datamodule) before using it "
                "(`genrec` does this for you)"
            )
        return Upstream()

    @property
    def semantic_ids(self) -> SemanticIds | None:
        """The items' semantic IDs (None when `semantic_ids_from` is not set)."""
        return self._attached().semantic_ids

    @property
    def codebook_sizes(self) -> list[int] | None:
        """Codes per level of the semantic IDs (linked to generative models; None without IDs)."""
        ids = self.semantic_ids
        return None if ids is None else ids.codebook_sizes

    @property
    def semantic_ids_path(self) -> Path | None:
        """Directory of the attached semantic-ID artifact (None without IDs)."""
        return self._attached().semantic_ids_dir

    @property
    def tokenizer_config(self) -> dict[str, Any] | None:
        """The TokenizerModule config that built the IDs (linked to UniGRec, which rebuilds the
        tokenizer from it and loads its weights); None without IDs or when the artifact lacks it."""
        return self._attached().tokenizer_config

    # ---------------------------------------------------------------------------- teacher
    def teacher_dir(self, key: str) -> Path:
        """Cache entry of the teacher trained on this dataset by the teacher config `key`."""
        return self.artifact_dir / "teachers" / key

    @property
    def teacher_embeddings(self) -> torch.Tensor | None:
        """Teacher item embeddings [num_items, d] (None when `teacher_from` is not set)."""
        return self._attached().teacher_embeddings

    @property
    def teacher_dim(self) -> int | None:
        """Size of the teacher's item embeddings (linked to UniGRec; None without a teacher)."""
        teacher = self.teacher_embeddings
        return None if teacher is None else int(teacher.shape[1])

    # ------------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.build_artifacts()

    def _load_sequences(self) -> pp.Sequences:
        if self._sequences is None:
            frame = _read_parquet(self.build_artifacts() / "interactions.parquet")
            self._sequences = pp.to_sequences(frame, self.num_users)
        return self._sequences

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        seqs = self._load_sequences()
        items = torch.from_numpy(seqs.items)
        offsets = torch.from_numpy(seqs.offsets)
        for name, split in pp.leave_one_out(seqs).items():
            if len(split) == 0:
                raise pp.EmptyDatasetError(f"the {name} split is empty; lower the k-core thresholds")
            self._splits[name] = SequenceSamples(
                items,
                offsets,
                torch.from_numpy(split.targets),
                torch.from_numpy(split.users),
                self.max_history,
                self.pad_item,
            )

    def split(self, name: Literal["train", "val", "test"]) -> SequenceSamples:
        if not self._splits:
            self.setup()
        return self._splits[name]

    def train_dataloader(self) -> DataLoader:
        return training_loader(self.split("train"), self.batch_size, self.num_workers, self.trainer)

    def _eval_loader(self, name: Literal["val", "test"]) -> DataLoader:
        dataset = self.split(name)
        world, rank = _distributed_world()
        sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class MovieLensDataModule(SequenceDataModule):
    """MovieLens 100K (embedded offline copy by default, or the original files) and 1M."""

    def __init__(
        self,
        variant: Literal["100k", "1m"] = "100k",
        root: str | None = None,
        download: bool = False,
        skip_malformed: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: `100k` or `1m`.
            root: directory with the raw files (`u.data`/`u.item` or `ratings.dat`/`movies.dat`).
                None: the embedded MovieLens-100K copy for `100k`, `data/ml-1m` for `1m`.
            download: fetch the official GroupLens zip into `root` if the files are missing.
            skip_malformed: drop unparsable lines (and report their count) instead of failing.
        """
        self.variant = variant
        self.root = root
        self.download = download
        self.skip_malformed = skip_malformed
        super().__init__(**kwargs)

    def build_reader(self) -> DatasetReader:
        if self.variant == "100k":
            if self.download and self.root is None:
                raise ValueError("download: true needs a root directory to download MovieLens-100K into")
            return MovieLens100K(self.root, download=self.download, skip_malformed=self.skip_malformed)
        return MovieLens1M(
            self.root or "data/ml-1m", download=self.download, skip_malformed=self.skip_malformed
        )


class AmazonDataModule(SequenceDataModule):
    """Amazon reviews: 2014 5-core files or 2023 files of one category."""

    def __init__(
        self,
        category: str = "Beauty",
        version: Literal["2014", "2023"] = "2014",
        root: str | None = None,
        skip_malformed: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            category: file-name category, e.g. `Beauty`, `Pet_Supplies` (2014) or
                `Musical_Instruments`, `Industrial_and_Scientific` (2023).
            version: `2014` (`reviews_<Cat>_5.json.gz` + `meta_<Cat>.json.gz`) or `2023`
                (`<Cat>.jsonl.gz` + `meta_<Cat>.jsonl.gz`).
            root: directory with the raw files (default `data/amazon<version>`).
            skip_malformed: drop unparsable lines (and report their count) instead of failing.
        """
        self.category = category
        self.version = version
        self.root = root
        self.skip_malformed = skip_malformed
        super().__init__(**kwargs)

    def build_reader(self) -> DatasetReader:
        root = self.root or f"data/amazon{self.version}"
        cls = Amazon2014 if self.version == "2014" else Amazon2023
        return cls(self.category, root=root, skip_malformed=self.skip_malformed)


class YelpDataModule(SequenceDataModule):
    """Yelp Open Dataset (reviews + business metadata; manual download by licence)."""

    def __init__(self, root: str = "data/yelp", skip_malformed: bool = False, **kwargs: Any) -> None:
        """
        Args:
            root: directory with `yelp_academic_dataset_review.json` and `..._business.json`.
            skip_malformed: drop unparsable lines (and report their count) instead of failing.
        """
        self.root = root
        self.skip_malformed = skip_malformed
        super().__init__(**kwargs)

    def build_reader(self) -> DatasetReader:
        return Yelp(self.root, skip_malformed=self.skip_malformed)


class ItemEmbeddingDataModule(L.LightningDataModule):
    """Tokenizer stage: batches of item embeddings of a dataset (train shuffled; val/predict all items)."""

    def __init__(self, data: SequenceDataModule, batch_size: int = 1024, num_workers: int = 0) -> None:
        """
        Args:
            data: the dataset whose items are tokenized (its filtering and encoder settings apply).
            batch_size: embeddings per batch.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        check_minimum(type(self).__name__, 1, batch_size=batch_size)
        check_minimum(type(self).__name__, 0, num_workers=num_workers)
        self.data = data
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.prepare_data_per_node = False
        self._embeddings: torch.Tensor | None = None

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def embedding_dim(self) -> int:
        meta = read_meta(self.data.build_embeddings())
        assert meta is not None
        return int(meta["dim"])

    @property
    def embeddings(self) -> torch.Tensor:
        if self._embeddings is None:
            self._embeddings = self.data.item_embeddings()
        return self._embeddings

    def prepare_data(self) -> None:
        self.data.build_embeddings()

    def setup(self, stage: str | None = None) -> None:
        _ = self.embeddings

    def _loader(self, shuffle: bool) -> DataLoader:
        dataset = ItemEmbeddings(self.embeddings)
        if shuffle:
            return training_loader(dataset, self.batch_size, self.num_workers, self.trainer)
        world, rank = _distributed_world()
        sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
