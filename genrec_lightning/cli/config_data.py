"""YAML -> data -> IDs: build the datamodule of a config outside LightningCLI.

`genrec data-stats`, `prepare`, `tokenize` and `genrec report --ids` need only the `data:`
section of a config (a data YAML or a whole experiment YAML) and none of the trainer; they share
this parser so a config means the same data in every command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule

from genrec_lightning.cli.checks import _config_paths, resolve_input_paths
from genrec_lightning.config_files import config_option_values, expand_bases, load_config
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.errors import ConfigError, user_errors_unwrapped


def data_args(args: list[str]) -> list[str]:
    """Turn `--config FILE` into `--data <json>` so experiment YAMLs (with model/trainer) also work;
    a file that builds on a base brings the base's data settings with it."""
    out: list[str] = []
    last = 0
    if args and args[-1] == "--config":
        raise ConfigError("--config needs a YAML file path")
    for start, end, path in config_option_values(args):
        out += args[last:start]
        loaded = load_config(path)
        if "data" not in loaded:
            raise ConfigError(f"{path} has no `data:` section: pass a data or experiment config")
        out += ["--data", json.dumps(loaded["data"])]
        last = end
    return out + args[last:]


def data_parser(prog: str, description: str) -> ArgumentParser:
    """A parser of one `--data` datamodule (sequences or item embeddings) and `--json`."""
    parser = ArgumentParser(prog=prog, description=description, default_env=False)
    parser.add_subclass_arguments((SequenceDataModule, ItemEmbeddingDataModule), "data", required=True)
    parser.add_argument("--json", type=bool, default=False, help="print JSON instead of a table")
    return parser


def sequence_data(datamodule: LightningDataModule) -> SequenceDataModule:
    """The sequence datamodule itself, or the one an item-embedding datamodule wraps."""
    return datamodule.data if isinstance(datamodule, ItemEmbeddingDataModule) else datamodule  # type: ignore[return-value]


def data_from_config(parser: ArgumentParser, args: Sequence[str]) -> tuple[Namespace, SequenceDataModule]:
    """Parse `args` (with `--config FILE`), resolve input paths next to the YAMLs, build the data.

    Returns the parsed options too, for the command's own flags (`--json`, `--force`).
    """
    cfg = parser.parse_args(data_args(list(args)))
    resolve_input_paths(cfg.data, [Path(p) for p in _config_paths(expand_bases(list(args)))])
    with user_errors_unwrapped():  # our error, not jsonargparse's dump of the config
        datamodule = parser.instantiate_classes(cfg).data
    return cfg, sequence_data(datamodule)


__all__ = ["data_args", "data_from_config", "data_parser", "sequence_data"]
