"""Run an earlier stage from its YAML when a later stage needs its artifact (auto-build).

A recommender datamodule names a tokenizer config (`tokenizer: configs/rqvae.yaml`). The config
is parsed exactly as `genrec fit` parses it, its result-determining settings are hashed with the
dataset's identity into a cache key, and the semantic-ID artifact under
`<data cache>/semantic_ids/<key>/` is loaded, or trained and written first. `genrec fit` on the
same tokenizer config writes to the same entry, so either order reuses the other's work.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import numpy as np
import torch
from filelock import FileLock
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from genrec_lightning.artifacts import META_FILE, config_hash
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule
from genrec_lightning.modules.tokenizer import TokenizerModule
from genrec_lightning.semantic_ids import SemanticIds

if TYPE_CHECKING:
    from genrec_lightning.data.datamodules import SequenceDataModule

log = logging.getLogger(__name__)

#: Default seed of every `genrec` run (the CLI's `seed_everything` default).
DEFAULT_SEED = 42
#: Trainer settings that change the trained tokenizer. Devices, strategy, logging and progress
#: display do not enter the key (an auto-build always runs on one device).
RESULT_TRAINER_KEYS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "limit_train_batches",
    "limit_val_batches",
    "check_val_every_n_epoch",
    "val_check_interval",
    "deterministic",
    "callbacks",
)


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in value.as_dict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, Path)):
        return value
    return repr(value)


def _data_batch_size(data_config: Any) -> int:
    default = inspect.signature(ItemEmbeddingDataModule).parameters["batch_size"].default
    init_args = _plain(data_config or {}).get("init_args", {}) if data_config else {}
    return int(init_args.get("batch_size", default))


def tokenizer_key(config: Namespace, data: SequenceDataModule) -> str:
    """Cache key of a parsed tokenizer run: model, result-relevant trainer settings, seed, data."""
    trainer = _plain(config.trainer)
    model = _plain(config.model)
    model.get("init_args", {}).pop("embedding_dim", None)  # linked from the data, which is keyed below
    return config_hash(
        {
            "model": model,
            "trainer": {name: trainer.get(name) for name in RESULT_TRAINER_KEYS},
            "seed": _plain(config.get("seed_everything", DEFAULT_SEED)),
            "batch_size": _data_batch_size(config.get("data")),
            "embeddings": data.embedding_dir().name,
        }
    )


def tokenizer_parser() -> LightningArgumentParser:
    """Parses a tokenizer YAML's model/trainer/seed as `genrec fit` does (its data is supplied)."""
    parser = LightningArgumentParser(default_env=False, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_lightning_class_args(TokenizerModule, "model", subclass_mode=True, required=True)
    parser.add_argument("--seed_everything", type=bool | int, default=DEFAULT_SEED)
    parser.add_argument("--data", type=dict | None, default=None, help="only batch_size/num_workers are used")
    parser.set_defaults(
        {
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "tokenizer"},
            }
        }
    )
    return parser


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Leave the caller's random state as it was, so a cache hit and a build seed the same run."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def semantic_ids_dir(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> Path:
    """The artifact directory of `data`'s IDs made by the tokenizer config, trained/fitted if missing."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer config {path} does not exist")
    parser = tokenizer_parser()
    try:
        cfg = parser.parse_args(["--config", str(path)])
    except Exception as err:  # jsonargparse reports which option is wrong
        raise ValueError(f"{path} is not a valid tokenizer config (model: TokenizerModule): {err}") from err
    items = ItemEmbeddingDataModule(data, batch_size=_data_batch_size(cfg.data))
    cfg.model.init_args.embedding_dim = items.embedding_dim  # the size link of `genrec fit`
    target = data.semantic_ids_dir(tokenizer_key(cfg, data))
    if not force and (target / META_FILE).is_file():
        return target
    data.cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data.cache_dir / f".{data.reader.name}.semantic_ids.lock")):
        if not force and (target / META_FILE).is_file():  # built by another process meanwhile
            return target
        log.info("Building semantic IDs for %s with %s into %s", data.reader.name, path, target)
        # One device, whatever the config says: this runs inside another command's setup.
        cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy = 1, 1, "auto"
        with isolated_rng():
            L.seed_everything(cfg.seed_everything, verbose=False)
            init = parser.instantiate_classes(cfg)
            model: TokenizerModule = init.model
            model.artifact_dir = target
            L.Trainer(**init.trainer).fit(model, datamodule=items)
    return target


def build_semantic_ids(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> SemanticIds:
    """Load the IDs of `data` made by the tokenizer config, training/fitting them first if needed."""
    return SemanticIds.load(
        semantic_ids_dir(config_path, data, force), expect=data.semantic_ids_expectation()
    )


def semantic_ids_for(source: str | Path, data: SequenceDataModule) -> SemanticIds:
    """Semantic IDs from an artifact directory or a tokenizer config, checked against `data`."""
    path = Path(source)
    if path.is_dir():
        return SemanticIds.load(path, expect=data.semantic_ids_expectation())
    if path.suffix in (".yaml", ".yml"):
        return build_semantic_ids(path, data)
    raise FileNotFoundError(
        f"tokenizer {source!r} is neither a semantic-ID artifact directory nor a tokenizer YAML "
        "(e.g. configs/rqvae.yaml)"
    )
