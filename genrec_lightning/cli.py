"""`genrec` command line: LightningCLI for fit/validate/test/predict plus data subcommands.

    genrec fit --config configs/<experiment>.yaml [--trainer.devices 2 --trainer.strategy ddp]
    genrec data-stats --config configs/data/ml100k.yaml      # Table-2 statistics of a dataset
    genrec prepare --config configs/data/ml100k.yaml         # build every data artifact now

Models and datamodules are chosen by class (`--model X --data Y` or `class_path` in YAML); every
constructor argument is an option with its docstring in `--help`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genrec_lightning import __version__

# Importing the datamodules also makes their short names (`--data MovieLensDataModule`) resolvable.
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule

#: Sizes that flow from the datamodule to the model after instantiation (`link_arguments`).
#: jsonargparse applies a link only when the chosen datamodule has the attribute and the chosen
#: model has the parameter, so one list serves every module and sizes are never typed twice.
SIZE_LINKS: tuple[tuple[str, str], ...] = (
    ("data.num_items", "model.init_args.num_items"),
    ("data.pad_item", "model.init_args.pad_item"),
    ("data.max_history", "model.init_args.max_history"),
    ("data.embedding_dim", "model.init_args.embedding_dim"),
)


class GenRecCLI(LightningCLI):
    """LightningCLI in subclass mode with the project's defaults (TensorBoard in `runs/`, seed 42)."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 42)
        # Modules own their optimiser settings as constructor arguments (e.g. separate learning
        # rates for tokenizer and T5 in UniGRec), so no generic --optimizer/--lr_scheduler.
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "genrec"},
                }
            }
        )
        for source, target in SIZE_LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")


def _config_section(args: list[str]) -> list[str]:
    """Turn `--config FILE` into `--data <json>` so experiment YAMLs (with model/trainer) also work."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" not in arg and i + 1 >= len(args):
                raise SystemExit("--config needs a YAML file path")
            path = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            i += 1 if "=" in arg else 2
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
            if "data" not in loaded:
                raise SystemExit(f"{path} has no `data:` section")
            out += ["--data", json.dumps(loaded["data"])]
            continue
        out.append(arg)
        i += 1
    return out


def _data_parser(prog: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, default_env=False)
    parser.add_subclass_arguments((SequenceDataModule, ItemEmbeddingDataModule), "data", required=True)
    parser.add_argument("--json", type=bool, default=False, help="print JSON instead of a table")
    return parser


def _sequence_data(datamodule: LightningDataModule) -> SequenceDataModule:
    return datamodule.data if isinstance(datamodule, ItemEmbeddingDataModule) else datamodule  # type: ignore[return-value]


def format_statistics(stats: dict[str, Any]) -> str:
    """Human-readable table of `SequenceDataModule.statistics()`."""
    raw = stats["raw"]
    raw_mean = raw["interactions"] / raw["users"] if raw["users"] else 0.0
    rows = [
        ("interactions", f"{raw['interactions']:,}", f"{stats['interactions']:,}"),
        ("users", f"{raw['users']:,}", f"{stats['users']:,}"),
        ("items", f"{raw['items']:,}", f"{stats['items']:,}"),
        ("history mean length", f"{raw_mean:.2f}", f"{stats['history_mean_length']:.2f}"),
        ("density", "", f"{stats['density']:.4%}"),
        ("train / val / test samples", "", f"{stats['train_samples']:,} / {stats['val_samples']:,} / "
         f"{stats['test_samples']:,}"),
        ("items with fallback text", "", f"{stats['fallback_texts']:,}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"Dataset: {stats['dataset']}", f"{'':{width}}  {'raw':>12}  {'filtered':>12}"]
    lines += [f"{name:{width}}  {a:>12}  {b:>12}" for name, a, b in rows]
    return "\n".join(lines)


def data_command(command: str, args: list[str]) -> None:
    """`data-stats`: print dataset statistics. `prepare`: also build the item embeddings."""
    description = (
        "Print the Table-2 statistics (interactions, users, items, mean history length) of a dataset."
        if command == "data-stats"
        else "Build every data artifact (preprocessed splits, item embeddings) and print statistics."
    )
    parser = _data_parser(f"genrec {command}", description)
    cfg = parser.parse_args(_config_section(args))
    datamodule = parser.instantiate_classes(cfg).data
    data = _sequence_data(datamodule)
    stats = data.statistics()
    stats["artifact_dir"] = str(data.artifact_dir)
    if command == "prepare":
        embeddings = data.item_embeddings()
        stats["embeddings"] = {"shape": list(embeddings.shape), "dir": str(data.embedding_dir())}
    if cfg.json:
        print(json.dumps(stats, indent=2))
        return
    print(format_statistics(stats))
    print(f"artifacts: {stats['artifact_dir']}")
    if "embeddings" in stats:
        shape = stats["embeddings"]["shape"]
        print(
            f"item embeddings: {shape[0]} x {shape[1]} ({data.encoder.model}) in {stats['embeddings']['dir']}"
        )


DATA_COMMANDS = ("data-stats", "prepare")


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point (`genrec`, `python -m genrec_lightning`)."""
    argv = list(sys.argv[1:] if args is None else args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] in ("--version", "-V"):
        print(f"genrec_lightning {__version__}")
        return
    if argv and argv[0] in DATA_COMMANDS:
        data_command(argv[0], argv[1:])
        return
    GenRecCLI(args=None if args is None else argv)


__all__ = ["GenRecCLI", "format_statistics", "main"]
