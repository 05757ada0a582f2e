"""Configs and command lines written before an option moved keep working, with a FutureWarning.

Used by every config parser: `genrec` (cli/) and the stage parsers (tokenizer, teacher).

The recommenders' optimiser and evaluation options moved from flat constructor arguments
(`model.init_args.lr`) into groups (`model.init_args.optimization.lr`, `modules/settings.py`).
The `config.yaml` of every earlier run, and the commands in people's notes, still say `lr`:
before parsing, such options are moved into their group when the model class has that group,
and the warning shows the new spelling. A tokenizer keeps its flat `lr` (it has no groups).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse.typing import import_object

from genrec_lightning.config_files import config_option_values, read_yaml
from genrec_lightning.modules.settings import GROUPS, group_fields, nest_flat_settings

MODEL_ARG = "--model.init_args."


def _groups_of(class_path: str | None) -> list[str]:
    """The setting groups the model class takes as parameters (none for an unknown class)."""
    if not class_path:
        return []
    try:
        cls = import_object(class_path)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [group for group in GROUPS if group in params]


def _model_section(loaded: Any) -> dict[str, Any] | None:
    model = loaded.get("model") if isinstance(loaded, dict) else None
    return model if isinstance(model, dict) else None


def _final_class_path(args: Sequence[str], configs: dict[int, Any]) -> str | None:
    """The model class the parser will end with: the last `class_path` of a config or the command line."""
    class_path = None
    i = 0
    while i < len(args):
        if i in configs:
            model = _model_section(configs[i])
            class_path = (model or {}).get("class_path") or class_path
        arg = args[i]
        for option in ("--model", "--model.class_path"):
            if arg == option and i + 1 < len(args):
                class_path = args[i + 1]
            elif arg.startswith(option + "="):
                class_path = arg.split("=", 1)[1]
        i += 1
    return class_path


def nest_flat_model_settings(args: Sequence[str]) -> list[str]:
    """`args` with every former flat group option of the model (in `--config` files and on the
    command line) moved into its group; a config file that needs it is passed as its YAML text."""
    args = list(args)
    configs: dict[int, Any] = {}
    for start, _, value in config_option_values(args):
        try:
            configs[start] = read_yaml(value) if Path(value).is_file() else yaml.safe_load(value)
        except (OSError, ValueError, yaml.YAMLError):  # not ours to judge: the parser reports it
            continue
    groups = _groups_of(_final_class_path(args, configs))
    if not groups:
        return args
    moved: list[str] = []
    for start, end, _ in config_option_values(args):
        model = _model_section(configs.get(start))
        init_args = (model or {}).get("init_args")
        if not isinstance(init_args, dict):
            continue
        nested, keys = nest_flat_settings(init_args, groups)
        if keys:
            model["init_args"] = nested  # type: ignore[index]
            moved += keys
            args[end - 1] = yaml.safe_dump(configs[start], sort_keys=False)
    owner = group_fields(groups)
    for i, arg in enumerate(args):
        if not arg.startswith(MODEL_ARG):
            continue
        key, sep, value = arg[len(MODEL_ARG) :].partition("=")
        if key in owner:
            args[i] = f"{MODEL_ARG}{owner[key]}.{key}{sep}{value}"
            moved.append(key)
    if moved:
        where = ", ".join(f"{owner[k]}.{k}" for k in dict.fromkeys(moved))
        warnings.warn(
            f"model options {', '.join(dict.fromkeys(moved))} are now grouped: write them as "
            f"model.init_args.{{{where}}}; the flat names will stop working in a later version",
            FutureWarning,
            stacklevel=2,
        )
    return args
