"""Checks of a parsed config that run before any stage: input paths, model settings, writable dirs.

They run before the datamodule is built because its size links may train a tokenizer or build
embeddings first; a mistyped path or setting should cost a second, not that work.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from jsonargparse import Namespace
from jsonargparse.typing import import_object

from genrec_lightning.errors import ConfigError, RunError

#: Data options that name input files (stage configs, artifacts). Relative ones are looked up in
#: the working directory, then next to each --config file and its parent directories, so
#: `genrec fit --config /path/to/repo/configs/tiger.yaml` works from any directory.
INPUT_PATH_KEYS = ("semantic_ids_from", "teacher_from", "tokenizer", "teacher")


def _config_paths(args: Sequence[str]) -> list[str]:
    """The files given with `--config FILE` / `--config=FILE`, in order."""
    paths = []
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(args):
            paths.append(args[i + 1])
    return paths


def _leaves(namespace: Namespace) -> list[tuple[Namespace, str, Any]]:
    out = []
    for key, value in vars(namespace).items():
        if isinstance(value, Namespace):
            out += _leaves(value)
        else:
            out.append((namespace, key, value))
    return out


def resolve_input_paths(data: Any, config_files: Sequence[Path]) -> None:
    """Make relative `semantic_ids_from`/`teacher_from` paths absolute, or fail before anything is created."""
    if not isinstance(data, Namespace):
        return
    for owner, key, value in _leaves(data):
        if key not in INPUT_PATH_KEYS or not isinstance(value, (str, Path)) or Path(value).is_absolute():
            continue
        if Path(value).exists():
            continue
        bases = [d for f in config_files for d in (f.resolve().parent, *f.resolve().parent.parents)]
        found = next((base / value for base in dict.fromkeys(bases) if (base / value).exists()), None)
        if found is None:
            where = ", ".join(str(f) for f in config_files) or "no --config file"
            raise ConfigError(
                f"data option {key}: {value} does not exist in the working directory {Path.cwd()} nor "
                f"next to the config files ({where}) or their parent directories; pass an absolute "
                "path or run from the repository root"
            )
        owner[key] = str(found)


def _class_path(section: Any) -> str:
    return str(section.get("class_path") or "") if isinstance(section, Namespace) else ""


def _trains(class_path: str) -> bool:
    """Whether the module learns weights (a recommender says so; MostPopular has nothing to learn)."""
    if not class_path:
        return False
    cls = import_object(class_path)
    if not isinstance(cls, type):
        return False
    default = cls.training_step is not L.LightningModule.training_step
    return bool(getattr(cls, "requires_training", default))


def check_model_settings(model: Any) -> None:
    """Range checks of the model's own settings (beam size, learning rate, ...) before any stage runs:
    the model is built only after the datamodule, whose size links may train a tokenizer first."""
    class_path = _class_path(model)
    if not class_path:
        return
    check: Callable[[dict[str, Any]], None] | None = getattr(
        import_object(class_path), "check_settings", None
    )
    if callable(check):
        init_args = model.get("init_args")
        check(init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args or {}))


def _logger_init_args(trainer: Namespace) -> Namespace | None:
    """init_args of the first configured logger that writes under a save_dir (TensorBoard, CSV)."""
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init_args, Namespace) and "save_dir" in init_args:
            return init_args
    return None


def _checkpoint_dirpath(trainer: Namespace) -> str | None:
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, Namespace) and _class_path(callback).endswith("ModelCheckpoint"):
            dirpath = (callback.get("init_args") or Namespace()).get("dirpath")
            if dirpath:
                return str(dirpath)
    return None


def check_runs_dir(trainer: Namespace) -> None:
    """The logger's and checkpoints' directories must be writable before hours of work start.

    Nothing is left behind: a temporary file is created and removed in the nearest existing
    ancestor of each directory (permission bits alone say nothing for root or on /proc-like mounts).
    """
    logger = _logger_init_args(trainer)
    dirs = [(Path(logger.get("save_dir") or "."), "--trainer.logger.init_args.save_dir")] if logger else []
    dirpath = _checkpoint_dirpath(trainer)
    if dirpath is not None:
        dirs.append((Path(dirpath), "the ModelCheckpoint dirpath"))
    for directory, option in dirs:
        existing = directory.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a directory")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            raise RunError(
                f"cannot write to {directory} ({err.strerror or err} in {existing}): "
                f"choose a writable directory with {option}"
            ) from err


__all__ = ["INPUT_PATH_KEYS", "check_model_settings", "check_runs_dir", "resolve_input_paths"]
