"""Run an earlier stage from its YAML when a later stage needs its artifact (auto-build).

A recommender datamodule names a tokenizer config (`tokenizer: configs/rqvae.yaml`) and, for
UniGRec, a teacher config (`teacher: configs/sasrec.yaml`). The config is parsed exactly as
`genrec fit` parses it, its result-determining settings are hashed with the dataset's identity
into a cache key, and the artifact under `<data cache>/semantic_ids/<key>/` (or `teachers/<key>/`)
is loaded, or trained and written first. `genrec fit` on the same config writes to the same
entry, so either order reuses the other's work.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from filelock import FileLock
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser
from safetensors.torch import load_file, save_file

from genrec_lightning.artifacts import META_FILE, atomic_dir, config_hash, read_meta, write_json_atomic
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.errors import user_errors_unwrapped
from genrec_lightning.modules.baselines import SequentialRecommender
from genrec_lightning.modules.tokenizer import TOKENIZER_CONFIG_KEY, TOKENIZER_FILE, TokenizerModule
from genrec_lightning.semantic_ids import ArtifactMismatchError, SemanticIds

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


def _data_setting(data_config: Any, name: str, owner: type) -> Any:
    """`name` from a config's data section, or `owner`'s constructor default."""
    default = inspect.signature(owner).parameters[name].default
    init_args = plain_config(data_config or {}).get("init_args", {}) if data_config else {}
    return init_args.get(name, default)


def _data_batch_size(data_config: Any) -> int:
    return int(_data_setting(data_config, "batch_size", ItemEmbeddingDataModule))


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
    identity = {"batch_size": _data_batch_size(config.get("data")), "embeddings": data.embedding_dir().name}
    return _stage_key(config, ("embedding_dim",), identity)


def stage_parser(module: type[L.LightningModule], name: str) -> LightningArgumentParser:
    """Parses a stage YAML's model/trainer/seed as `genrec fit` does (its dataset is supplied)."""
    parser = LightningArgumentParser(default_env=False, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_lightning_class_args(module, "model", subclass_mode=True, required=True)
    parser.add_argument("--seed_everything", type=bool | int, default=DEFAULT_SEED)
    parser.add_argument(
        "--data", type=dict | None, default=None, help="only the loader settings (batch sizes) are used"
    )
    parser.set_defaults(
        {
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": name},
            }
        }
    )
    return parser


def tokenizer_parser() -> LightningArgumentParser:
    """Parses a tokenizer YAML (model: a TokenizerModule)."""
    return stage_parser(TokenizerModule, "tokenizer")


def _parse_stage(parser: LightningArgumentParser, path: Path, what: str, *extra: str) -> Namespace:
    if not path.is_file():
        raise FileNotFoundError(f"{what} config {path} does not exist")
    try:
        return parser.parse_args(["--config", str(path), *extra])
    except Exception as err:  # jsonargparse reports which option is wrong
        raise ValueError(f"{path} is not a valid {what} config: {err}") from err


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


def _complete_ids(directory: Path) -> bool:
    """A finished artifact of this version: IDs plus the config that rebuilds the tokenizer (entries
    written before the tokenizer weights were stored are rebuilt once)."""
    meta = read_meta(directory)
    return meta is not None and TOKENIZER_CONFIG_KEY in meta


def semantic_ids_dir(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> Path:
    """The artifact directory of `data`'s IDs made by the tokenizer config, trained/fitted if missing."""
    path = Path(config_path)
    parser = tokenizer_parser()
    cfg = _parse_stage(parser, path, "tokenizer (model: TokenizerModule)")
    items = ItemEmbeddingDataModule(data, batch_size=_data_batch_size(cfg.data))
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
            model.artifact_dir = target
            model.artifact_meta[TOKENIZER_CONFIG_KEY] = plain_config(cfg.model)
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


# --------------------------------------------------------------------------- stage-1 tokenizer
def build_tokenizer(spec: dict[str, Any]) -> torch.nn.Module:
    """The tokenizer network of a TokenizerModule config (class_path + init_args), untrained."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(TokenizerModule, "model")
    try:
        cfg = parser.parse_object({"model": spec})
        module = parser.instantiate_classes(cfg).model
    except Exception as err:
        raise ValueError(f"cannot rebuild the tokenizer from its stored config {spec}: {err}") from err
    return module.tokenizer


def load_tokenizer_weights(tokenizer: torch.nn.Module, directory: str | Path) -> None:
    """Load the trained weights stored in a semantic-ID artifact into `tokenizer` (shapes checked)."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the semantic-ID artifact {directory} holds IDs but no tokenizer "
            "weights (built by an older version, or by a tokenizer without weights). Rebuild it with "
            "`genrec tokenize --config <tokenizer yaml> --force`"
        )
    state = load_file(str(path))
    own = tokenizer.state_dict()
    wrong = [
        f"{k}: artifact {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        raise ArtifactMismatchError(
            f"the tokenizer weights in {path} do not fit the tokenizer config "
            f"(shape mismatches {wrong[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    tokenizer.load_state_dict(state)


# ------------------------------------------------------------------------------------ teacher
#: The teacher's item-embedding table inside a teacher artifact.
TEACHER_FILE = "item_embeddings.safetensors"
#: What a teacher is trained on: the training part of the leave-one-out split (all but each
#: user's last two items); validation only selects the checkpoint, test targets are never seen.
TEACHER_SPLIT = "train"
#: Model sizes linked from the data, so not part of a teacher's cache key.
TEACHER_LINKED = ("num_items", "max_history", "pad_item")


def teacher_parser() -> LightningArgumentParser:
    """Parses a teacher YAML (model: a SequentialRecommender such as SASRec)."""
    return stage_parser(SequentialRecommender, "teacher")


def teacher_key(config: Namespace, data: SequenceDataModule) -> str:
    """Cache key of a parsed teacher run: model, trainer settings, seed, batch size and dataset."""
    identity = {
        "batch_size": int(_data_setting(config.get("data"), "batch_size", SequenceDataModule)),
        "data_hash": data.data_hash,
        "max_history": data.max_history,
    }
    return _stage_key(config, TEACHER_LINKED, identity)


def teacher_expectation(data: SequenceDataModule) -> dict[str, Any]:
    """What a teacher artifact's meta must say to serve `data`."""
    return {**data.semantic_ids_expectation(), "split": TEACHER_SPLIT}


def export_teacher(
    model: SequentialRecommender, trainer: L.Trainer, data: SequenceDataModule, directory: Path
) -> Path:
    """Write the item embeddings of the fitted `model` (best checkpoint when there is one) atomically."""
    network = model.network
    if not callable(getattr(network, "item_vectors", None)):
        raise TypeError(
            f"{type(network).__name__} has no item_vectors(); a teacher must expose its item table"
        )
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    vectors = network.item_vectors().detach().float().cpu()
    if vectors.shape[0] != data.num_items or not bool(torch.isfinite(vectors).all()):
        raise ValueError(
            f"teacher item table of shape {tuple(vectors.shape)} is not {data.num_items} finite rows"
        )
    score = getattr(callback, "best_model_score", None) if best else None
    meta = {
        **teacher_expectation(data),
        "dim": int(vectors.shape[1]),
        "network": type(network).__name__,
        "checkpoint": str(best),
        "selected_on": getattr(callback, "monitor", None) if best else "last weights",
        "selection_score": None if score is None else float(score),
        "global_step": int(trainer.global_step),
    }
    with atomic_dir(directory) as tmp:
        save_file({"item_embeddings": vectors.contiguous()}, str(tmp / TEACHER_FILE))
        write_json_atomic(tmp / META_FILE, meta)
    log.info("Teacher item embeddings %s written to %s", tuple(vectors.shape), directory)
    return directory


def load_teacher(directory: str | Path, data: SequenceDataModule) -> torch.Tensor:
    """Teacher item embeddings [num_items, d] from an artifact, refused if built on other data/split."""
    directory = Path(directory)
    meta = read_meta(directory)
    path = directory / TEACHER_FILE
    if meta is None or not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a teacher artifact ({META_FILE} and {TEACHER_FILE} expected); build one "
            "with `genrec fit --config configs/sasrec.yaml` or name the teacher YAML instead"
        )
    for key, wanted in teacher_expectation(data).items():
        if meta.get(key) != wanted:
            raise ArtifactMismatchError(  # it may be a valid teacher of another dataset: keep it
                f"teacher {directory} was built for another dataset/split: {key!r} is "
                f"{meta.get(key, '<missing>')!r}, expected {wanted!r}; point `teacher` at this dataset's "
                "teacher artifact, or at the teacher YAML (e.g. configs/sasrec.yaml), which trains this "
                "dataset's own entry"
            )
    vectors = load_file(str(path))["item_embeddings"]
    if vectors.ndim != 2 or vectors.shape[0] != data.num_items or not bool(torch.isfinite(vectors).all()):
        raise ArtifactMismatchError(
            f"teacher artifact {directory} is corrupted or was modified after it was written ({path} "
            f"holds {tuple(vectors.shape)} or non-finite embeddings, expected {data.num_items} finite "
            f"rows); delete {directory} and train it again by naming the teacher YAML as `teacher`"
        )
    return vectors


def teacher_dir(config_path: str | Path, data: SequenceDataModule, force: bool = False) -> Path:
    """The teacher artifact of `data` made by the teacher config, trained on one device if missing."""
    path = Path(config_path)
    parser = teacher_parser()
    sizes = (
        f"--model.init_args.num_items={data.num_items}",
        f"--model.init_args.max_history={data.max_history}",
    )
    cfg = _parse_stage(parser, path, "teacher (model: SequentialRecommender)", *sizes)
    target = data.teacher_dir(teacher_key(cfg, data))
    if not force and (target / META_FILE).is_file():
        return target
    data.cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data.cache_dir / f".{data.reader.name}.teacher.lock")):
        if not force and (target / META_FILE).is_file():
            return target
        log.info(
            "Training the teacher %s on the training split of %s into %s", path, data.reader.name, target
        )
        loader = copy.copy(data)  # same dataset and splits, the teacher config's batch sizes
        loader.tokenizer, loader.teacher = None, None
        for name in ("batch_size", "eval_batch_size"):
            setattr(loader, name, int(_data_setting(cfg.data, name, SequenceDataModule)))
        cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy = 1, 1, "auto"
        with isolated_rng():
            L.seed_everything(cfg.seed_everything, verbose=False)
            with user_errors_unwrapped():
                init = parser.instantiate_classes(cfg)
            trainer = L.Trainer(**init.trainer)
            trainer.fit(init.model, datamodule=loader)
            export_teacher(init.model, trainer, data, target)
    return target


def teacher_embeddings_for(source: str | Path, data: SequenceDataModule) -> torch.Tensor:
    """Teacher item embeddings from an artifact directory or a teacher YAML (trained if missing)."""
    path = Path(source)
    if path.is_dir():
        return load_teacher(path, data)
    if path.suffix in (".yaml", ".yml"):
        return load_teacher(teacher_dir(path, data), data)
    raise FileNotFoundError(
        f"teacher {source!r} is neither a teacher artifact directory nor a teacher YAML "
        "(e.g. configs/sasrec.yaml)"
    )
