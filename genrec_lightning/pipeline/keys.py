"""Cache keys of upstream stages: which settings of a stage config determine its artifact.

A tokenizer or teacher run is keyed by its model (minus the sizes linked from the data), the
trainer settings that change its result, its seed and the identity of the data it trained on,
so `genrec fit` of a stage config and the auto-build of the same config share one cache entry.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from genrec_lightning.artifacts import config_hash
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.modules.settings import flatten_groups

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


def plain_config(value: Any) -> Any:
    """A parsed config (jsonargparse Namespaces, lists, paths) as plain JSON-like values."""
    if isinstance(value, Namespace):
        return {k: plain_config(v) for k, v in value.as_dict().items()}
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, Path)):
        return value
    return repr(value)


def data_setting(data_config: Any, name: str, owner: type) -> Any:
    """`name` from a config's data section, or `owner`'s constructor default."""
    default = inspect.signature(owner).parameters[name].default
    init_args = plain_config(data_config or {}).get("init_args", {}) if data_config else {}
    return init_args.get(name, default)


def data_batch_size(data_config: Any) -> int:
    return int(data_setting(data_config, "batch_size", ItemEmbeddingDataModule))


#: Settings added after artifacts were first cached, with the value that reproduces the artifacts
#: built before they existed: at that value they are left out of the cache key, so an upgrade does
#: not rebuild caches whose results cannot have changed.
NEUTRAL_DEFAULTS: dict[str, Any] = {
    "dead_code_threshold": 0,
    "relative_temperature": False,
    "lr_decay": "constant",
    "lr_warmup_steps": 0,
}


def _without_neutral_defaults(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_neutral_defaults(v)
            for k, v in value.items()
            if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
        }
    if isinstance(value, list):
        return [_without_neutral_defaults(v) for v in value]
    return value


def _stage_key(config: Namespace, linked: tuple[str, ...], data_identity: dict[str, Any]) -> str:
    """Hash of a parsed stage config: model (minus linked sizes and neutral defaults),
    result-relevant trainer settings, seed and the identity of the data it was trained on."""
    trainer = plain_config(config.trainer)
    model = _without_neutral_defaults(plain_config(config.model))
    if isinstance(model.get("init_args"), dict):  # keyed as before the setting groups: caches stay valid
        model["init_args"] = flatten_groups(model["init_args"])
    for name in linked:  # linked from the data, which is keyed through `data_identity`
        model.get("init_args", {}).pop(name, None)
    return config_hash(
        {
            "model": model,
            "trainer": {name: trainer.get(name) for name in RESULT_TRAINER_KEYS},
            "seed": plain_config(config.get("seed_everything", DEFAULT_SEED)),
            **data_identity,
        }
    )


def tokenizer_key(config: Namespace, data: SequenceDataModule) -> str:
    """Cache key of a parsed tokenizer run: model, result-relevant trainer settings, seed, data."""
    identity = {"batch_size": data_batch_size(config.get("data")), "embeddings": data.embedding_dir().name}
    return _stage_key(config, ("embedding_dim",), identity)


#: Model sizes linked from the data, so not part of a teacher's cache key.
TEACHER_LINKED = ("num_items", "max_history", "pad_item")


def teacher_key(config: Namespace, data: SequenceDataModule) -> str:
    """Cache key of a parsed teacher run: model, trainer settings, seed, batch size and dataset."""
    identity = {
        "batch_size": int(data_setting(config.get("data"), "batch_size", SequenceDataModule)),
        "data_hash": data.data_hash,
        "max_history": data.max_history,
    }
    return _stage_key(config, TEACHER_LINKED, identity)
