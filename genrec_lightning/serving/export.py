"""Gather what a trained recommender needs to recommend without its run: `export_bundle`.

The model arrives built from its config with the checkpoint's weights and its datamodule attached
(`genrec export` does that); this collects the catalogue (raw ids and texts), the item embeddings
and the IDs it decodes, with the tokenizer that made them, the text encoder's settings, the
dataset's identity and the checkpoint's metrics, and writes the bundle.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import load_file

from genrec_lightning.data.datamodules import SequenceDataModule
from genrec_lightning.modules.base import RecommenderModule
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.modules.tokenizer import TOKENIZER_CONFIG_KEY, TOKENIZER_FILE
from genrec_lightning.modules.unigrec import UniGRecModule
from genrec_lightning.semantic_ids import SemanticIds
from genrec_lightning.serving.bundle import BundleError, write_bundle


def model_spec(model: RecommenderModule, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor that rebuilds `model`: the config's class and components (network, loss),
    with every setting the model was built with (sizes linked from the data included)."""
    init_args = dict(spec.get("init_args") or {})
    params = inspect.signature(type(model).__init__).parameters
    for key, value in dict(model.hparams).items():
        if key in params and key not in ("network", "loss"):
            init_args[key] = list(value) if isinstance(value, tuple) else value
    cls = type(model)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _items(data: SequenceDataModule) -> pl.DataFrame:
    frame = pl.read_parquet(data.build_artifacts() / "items.parquet", columns=["item", "item_raw", "text"])
    return frame.sort("item")


def _semantic_ids(model: GenerativeRecommender, data: SequenceDataModule) -> tuple[SemanticIds, dict | None]:
    """The IDs the model decodes and the tokenizer weights that encode new items."""
    ids = data.semantic_ids
    if ids is None:
        raise BundleError(
            "the datamodule has no semantic IDs: export from the config the model was trained with"
        )
    if isinstance(model, UniGRecModule):  # its IDs follow its own tokenizer: take them from the model
        model.refresh_semantic_ids()
        meta = {k: v for k, v in ids.meta.items() if k in ("dataset", "data_hash", TOKENIZER_CONFIG_KEY)}
        own = SemanticIds(
            model.item_codes().cpu(),
            model.codebook_sizes,
            raw_codes=model.raw_item_codes().cpu(),
            dedup="suffix",
            meta=meta,
        )
        return own, model.tokenizer.state_dict()
    if not torch.equal(model.item_codes().cpu(), ids.codes):
        raise BundleError(
            "the model's ID table differs from the datamodule's: export with the config it was trained on"
        )
    stored = data.semantic_ids_path / TOKENIZER_FILE if data.semantic_ids_path is not None else None
    return ids, (load_file(str(stored)) if stored is not None and stored.is_file() else None)


def export_bundle(
    model: RecommenderModule,
    data: SequenceDataModule,
    output: str | Path,
    *,
    spec: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    checkpoint_path: Path,
    encoder: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the bundle of `model` (weights loaded, `data` attached) to `output`.

    Args:
        spec: the model section of the run's config (class_path + init_args).
        checkpoint: the loaded checkpoint (epoch and step are recorded).
        checkpoint_path: where the weights came from (recorded).
        encoder: class_path + init_args of the text encoder that made the item embeddings.
        metrics: test metrics of this checkpoint, when known.
        data_config: the run's data section, kept in config.yaml for the record.
    """
    model = model.cpu().float().eval()
    embeddings = semantic_ids = tokenizer_state = None
    if isinstance(model, GenerativeRecommender):
        embeddings = data.item_embeddings()
        semantic_ids, tokenizer_state = _semantic_ids(model, data)
    network = getattr(model, "network", None)
    users = data.id_maps()[0] if getattr(network, "num_user_buckets", 0) else None
    meta = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "dataset": data.reader.name,
        "data_hash": data.data_hash,
        "trained_items": data.num_items,
        "checkpoint": {
            "file": checkpoint_path.name,
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "metrics": dict(metrics or {}),
        "encoder": dict(encoder) if encoder else None,
    }
    extra = {"data": dict(data_config)} if data_config else None
    return write_bundle(
        output,
        model=model,
        model_spec=model_spec(model, spec),
        items=_items(data),
        meta=meta,
        embeddings=embeddings,
        semantic_ids=semantic_ids,
        tokenizer_state=tokenizer_state,
        extra_config=extra,
        users=users,
    )


__all__ = ["export_bundle", "model_spec"]
