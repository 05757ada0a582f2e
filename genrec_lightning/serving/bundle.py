"""The bundle: one directory from which a trained recommender recommends, with nothing else.

    bundle/
      meta.json                    format, versions, dataset identity, metrics, checksums
      config.yaml                  the model's constructor (class_path + init_args, sizes included)
      model.safetensors            the module's weights (ID table and tokenizer included)
      items.parquet                item (dense id), item_raw (the dataset's id), text
      item_embeddings.safetensors  the text encoder's vectors of every item (generative models)
      semantic_ids/                the ID table, its raw codes and dedup rule, the tokenizer's
                                   weights and config (generative models; `SemanticIds.load`)
      users.parquet                user, user_raw (only for a model that reads a user token)

Every file's SHA-256 is in meta.json, so a copied or edited bundle is caught on load, and the
format number says which layout a reader must understand. Writing goes through a temporary
directory that replaces the target only when complete.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from genrec_lightning import __version__
from genrec_lightning.artifacts import META_FILE, atomic_dir, read_meta, sha256_of, write_json_atomic
from genrec_lightning.errors import GenRecError
from genrec_lightning.modules.tokenizer import TOKENIZER_FILE
from genrec_lightning.semantic_ids import SemanticIds

#: Layout version of a bundle; a reader refuses any other (see `check_format`).
BUNDLE_FORMAT = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "item_embeddings.safetensors"
IDS_DIR = "semantic_ids"
USERS_FILE = "users.parquet"
#: Files every bundle has (the generative ones add embeddings and semantic IDs).
REQUIRED = (MODEL_FILE, CONFIG_FILE, ITEMS_FILE)


class BundleError(GenRecError, ValueError):
    """A directory that is not a usable bundle: what is wrong and how to get a good one."""


def write_bundle(
    target: str | Path,
    *,
    model: nn.Module,
    model_spec: Mapping[str, Any],
    items: pl.DataFrame,
    meta: Mapping[str, Any],
    embeddings: Tensor | None = None,
    semantic_ids: SemanticIds | None = None,
    tokenizer_state: Mapping[str, Tensor] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    users: pl.DataFrame | None = None,
) -> Path:
    """Write a complete bundle to `target` atomically (an existing bundle there is replaced only
    once the new one is complete) and return its path.

    `model_spec` rebuilds the module (`{"class_path", "init_args"}`); `items` has columns item,
    item_raw, text in dense-id order; `meta` adds to what the bundle records about itself.
    """
    target = Path(target)
    if list(items["item"]) != list(range(items.height)):
        raise BundleError("items must list every dense item id 0..N-1 in order")
    with atomic_dir(target) as tmp:
        save_model(model, str(tmp / MODEL_FILE))  # shared (tied) weights are stored once
        config = {"model": dict(model_spec), **dict(extra_config or {})}
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        items.select("item", "item_raw", "text").write_parquet(tmp / ITEMS_FILE)
        if users is not None:
            users.select("user", "user_raw").write_parquet(tmp / USERS_FILE)
        if embeddings is not None:
            save_file(
                {"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp / EMBEDDINGS_FILE)
            )
        if semantic_ids is not None:
            weights = {TOKENIZER_FILE: dict(tokenizer_state)} if tokenizer_state else None
            semantic_ids.save(tmp / IDS_DIR, tensors=weights)
        files = {str(p.relative_to(tmp)): sha256_of(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        record = {
            "format": BUNDLE_FORMAT,
            "genrec_lightning": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "num_items": items.height,
            **dict(meta),
            "files": files,
        }
        write_json_atomic(tmp / META_FILE, record)
    return target


def check_format(directory: Path, meta: Mapping[str, Any]) -> None:
    """Refuse a bundle of another layout with the versions that wrote and read it."""
    found = meta.get("format")
    if found != BUNDLE_FORMAT:
        writer = meta.get("genrec_lightning", "an unknown version")
        raise BundleError(
            f"{directory} is a bundle of format {found!r} written by genrec_lightning {writer}; this "
            f"genrec_lightning {__version__} reads format {BUNDLE_FORMAT}: export the run again with "
            f"`genrec export`, or install genrec_lightning=={writer} to use it"
        )


def read_bundle_meta(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """The bundle's meta.json after checking its format and (with `verify`) every file's checksum."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle {directory} does not exist: write one with `genrec export`")
    meta = read_meta(directory)
    if meta is None:
        raise BundleError(
            f"{directory} has no {META_FILE}: it is not a bundle (or its export was interrupted); "
            "write one with `genrec export --config ... --ckpt_path ... --output DIR`"
        )
    check_format(directory, meta)
    files = meta.get("files") or {}
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise BundleError(f"{directory}/{META_FILE} lists no {', '.join(missing)}: export the bundle again")
    if verify:
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{path} is missing from the bundle: copy the whole directory")
            if sha256_of(path) != digest:
                raise BundleError(
                    f"{path} was modified or corrupted (checksum differs): export the bundle again"
                )
    return meta


def read_config(directory: Path) -> dict[str, Any]:
    config = yaml.safe_load((directory / CONFIG_FILE).read_text())
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise BundleError(f"{directory / CONFIG_FILE} has no model section: export the bundle again")
    return config


def read_embeddings(directory: Path) -> Tensor | None:
    path = directory / EMBEDDINGS_FILE
    return load_file(str(path))["embeddings"] if path.is_file() else None


def read_semantic_ids(directory: Path) -> SemanticIds | None:
    path = directory / IDS_DIR
    return SemanticIds.load(path) if path.is_dir() else None


__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "check_format",
    "read_bundle_meta",
    "write_bundle",
]
