"""Fulfil what a dataset declares: build or load its semantic IDs and teacher, then attach them."""

from __future__ import annotations

from typing import Any, TypeVar

from genrec_lightning.artifacts import read_meta
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.data.upstream import Upstream
from genrec_lightning.modules.tokenizer import TOKENIZER_CONFIG_KEY
from genrec_lightning.pipeline.teacher import teacher_embeddings_for
from genrec_lightning.pipeline.tokenize import semantic_ids_path
from genrec_lightning.semantic_ids import SemanticIds

DataModule = TypeVar("DataModule")


def build_upstream(data: SequenceDataModule) -> Upstream:
    """The artifacts `data` declares (`semantic_ids_from`, `teacher_from`), trained first if missing."""
    ids = directory = config = teacher = None
    if data.semantic_ids_from is not None:
        directory = semantic_ids_path(data.semantic_ids_from, data)
        ids = SemanticIds.load(directory, expect=data.semantic_ids_expectation())
        meta: dict[str, Any] = read_meta(directory) or {}
        config = meta.get(TOKENIZER_CONFIG_KEY)
    if data.teacher_from is not None:
        teacher = teacher_embeddings_for(data.teacher_from, data)
    return Upstream(
        semantic_ids=ids, semantic_ids_dir=directory, tokenizer_config=config, teacher_embeddings=teacher
    )


def attach_upstream(datamodule: DataModule) -> DataModule:
    """Give a recommender datamodule what its earlier stages produce; return it for chaining.

    The only place where preparing data may train something (an RQ-VAE, a SASRec teacher), and it
    happens here, explicitly, not when a property is read. Datamodules that declare nothing, and
    the tokenizer stage's `ItemEmbeddingDataModule`, are returned untouched.
    """
    if isinstance(datamodule, SequenceDataModule) and datamodule.needs_upstream:
        datamodule.attach(build_upstream(datamodule))
    elif not isinstance(datamodule, (SequenceDataModule, ItemEmbeddingDataModule)):
        raise TypeError(f"attach_upstream needs a SequenceDataModule, got {type(datamodule).__name__}")
    return datamodule
