"""The semantic-ID stage: the IDs a tokenizer config makes for a dataset, built once, then cached.

A recommender datamodule names a tokenizer config (`semantic_ids_from: configs/rqvae.yaml`) or an
artifact directory. A config is parsed exactly as `genrec fit` parses it and keyed
(`pipeline.keys`); its artifact under `<data cache>/semantic_ids/<key>/` is loaded, or trained and
written first. `genrec fit` of the tokenizer config goes through the same
`prepare_tokenizer_run`, so either order reuses the other's work.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as L
from filelock import FileLock
from jsonargparse import Namespace

from genrec_lightning.artifacts import read_meta
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.errors import user_errors_unwrapped
from genrec_lightning.modules.tokenizer import TOKENIZER_CONFIG_KEY, TokenizerModule
from genrec_lightning.pipeline.keys import data_batch_size, plain_config, tokenizer_key
from genrec_lightning.pipeline.stages import isolated_rng, parse_stage, tokenizer_parser
from genrec_lightning.semantic_ids import SemanticIds

log = logging.getLogger(__name__)


def prepare_tokenizer_run(model: TokenizerModule, config: Namespace, data: SequenceDataModule) -> Path:
    """Point a tokenizer run at the cache entry of its config and record the config that rebuilds
    it. `genrec fit` of a tokenizer YAML and the auto-build both call this, so they cannot drift."""
    target = data.semantic_ids_dir(tokenizer_key(config, data))
    model.artifact_dir = target
    spec = plain_config(config.model)
    spec.setdefault("init_args", {})["embedding_dim"] = model.hparams.embedding_dim
    model.artifact_meta[TOKENIZER_CONFIG_KEY] = spec
    return target


def _complete_ids(directory: Path) -> bool:
    """A finished artifact of this version: IDs plus the config that rebuilds the tokenizer (entries
    written before the tokenizer weights were stored are rebuilt once)."""
    meta = read_meta(directory)
    return meta is not None and TOKENIZER_CONFIG_KEY in meta


def semantic_ids_dir(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> Path:
    """The artifact directory of `data`'s IDs made by the tokenizer config, trained/fitted if missing."""
    path = Path(config_path)
    parser = tokenizer_parser()
    cfg = parse_stage(parser, path, "tokenizer (model: TokenizerModule)")
    items = ItemEmbeddingDataModule(data, batch_size=data_batch_size(cfg.data))
    cfg.model.init_args.embedding_dim = items.embedding_dim  # the size link of `genrec fit`
    target = data.semantic_ids_dir(tokenizer_key(cfg, data))
    if not force and _complete_ids(target):
        return target
    data.cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data.cache_dir / f".{data.reader.name}.semantic_ids.lock")):
        if not force and _complete_ids(target):  # built by another process meanwhile
            return target
        log.info("Building semantic IDs for %s with %s into %s", data.reader.name, path, target)
        # One device, whatever the config says: this runs inside another command's setup.
        cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy = 1, 1, "auto"
        with isolated_rng():
            L.seed_everything(cfg.seed_everything, verbose=False)
            with user_errors_unwrapped():
                init = parser.instantiate_classes(cfg)
            model: TokenizerModule = init.model
            prepare_tokenizer_run(model, cfg, data)
            L.Trainer(**init.trainer).fit(model, datamodule=items)
    return target


def build_semantic_ids(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> SemanticIds:
    """Load the IDs of `data` made by the tokenizer config, training/fitting them first if needed."""
    return SemanticIds.load(
        semantic_ids_dir(config_path, data, force), expect=data.semantic_ids_expectation()
    )


def semantic_ids_path(source: str | Path, data: SequenceDataModule) -> Path:
    """The artifact directory named by `source` (itself, or the cache entry of a tokenizer YAML)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.suffix in (".yaml", ".yml"):
        return semantic_ids_dir(path, data)
    raise FileNotFoundError(
        f"tokenizer {source!r} is neither a semantic-ID artifact directory nor a tokenizer YAML "
        "(e.g. configs/rqvae.yaml)"
    )


def semantic_ids_for(source: str | Path, data: SequenceDataModule) -> SemanticIds:
    """Semantic IDs from an artifact directory or a tokenizer config, checked against `data`."""
    return SemanticIds.load(semantic_ids_path(source, data), expect=data.semantic_ids_expectation())
