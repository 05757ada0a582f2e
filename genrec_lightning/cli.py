"""`genrec` command line: LightningCLI for fit/validate/test/predict plus data subcommands.

    genrec fit --config configs/<experiment>.yaml [--trainer.devices 2 --trainer.strategy ddp]
    genrec data-stats --config configs/data/ml100k.yaml      # Table-2 statistics of a dataset
    genrec prepare --config configs/data/ml100k.yaml         # build every data artifact now
    genrec tokenize --config configs/rqvae.yaml              # build/reuse semantic IDs, print stats

Models and datamodules are chosen by class (`--model X --data Y` or `class_path` in YAML); every
constructor argument is an option with its docstring in `--help`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genrec_lightning import __version__

# Importing the callbacks and datamodules also makes their short names resolvable
# (`--trainer.callbacks+=TopKWriter`, `--data MovieLensDataModule`).
from genrec_lightning import callbacks as _callbacks  # noqa: F401
from genrec_lightning.artifacts import atomic_file
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule

#: Sizes that flow from the datamodule to the model after instantiation (`link_arguments`).
#: jsonargparse applies a link only when the chosen datamodule has the attribute and the chosen
#: model has the parameter, so one list serves every module and sizes are never typed twice.
SIZE_LINKS: tuple[tuple[str, str], ...] = (
    ("data.num_items", "model.init_args.num_items"),
    ("data.pad_item", "model.init_args.pad_item"),
    ("data.max_history", "model.init_args.max_history"),
    ("data.embedding_dim", "model.init_args.embedding_dim"),
    ("data.codebook_sizes", "model.init_args.codebook_sizes"),
    ("data.tokenizer_config", "model.init_args.tokenizer_config"),
    ("data.teacher_dim", "model.init_args.teacher_dim"),
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
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after `fit`, test a recommender's best checkpoint (Recall/NDCG on the held-out items)",
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would merge the checkpoint's saved hyperparameters *over* the given config,
        # silently undoing options typed on the command line. Here the config is the truth and
        # the checkpoint supplies weights; modules check that the two fit in on_load_checkpoint.
        return

    def after_instantiate_classes(self) -> None:
        # Lightning records every applied size link in the model's hparams, even a link the model
        # has no parameter for (jsonargparse then drops it); prune those so `load_from_checkpoint`
        # can rebuild the module from its checkpoint.
        model = getattr(self, "model", None)
        if model is None:
            return
        params = inspect.signature(type(model).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        for store in (model._hparams, getattr(model, "_hparams_initial", {})):
            for key in [k for k in store if k not in params and not k.startswith("_")]:
                del store[key]

    def before_fit(self) -> None:
        # A tokenizer run from a config writes its IDs to the data cache entry of that config, the
        # one a recommender naming the same config looks up (see genrec_lightning.stages).
        from genrec_lightning.modules.tokenizer import TOKENIZER_CONFIG_KEY, TokenizerModule
        from genrec_lightning.stages import plain_config, tokenizer_key

        if isinstance(self.model, TokenizerModule) and isinstance(self.datamodule, ItemEmbeddingDataModule):
            data = self.datamodule.data
            self.model.artifact_dir = data.semantic_ids_dir(tokenizer_key(self.config.fit, data))
            spec = plain_config(self.config.fit.model)
            spec.setdefault("init_args", {})["embedding_dim"] = self.model.hparams.embedding_dim
            self.model.artifact_meta[TOKENIZER_CONFIG_KEY] = spec

    def after_fit(self) -> None:
        # The headline run goes from data to test metrics in one command: test the checkpoint
        # that model selection (val/ndcg@10) chose, or the final weights without a checkpoint.
        from genrec_lightning.modules.base import RecommenderModule

        if (
            not isinstance(self.model, RecommenderModule)
            or self.trainer.interrupted
            or self.trainer.fast_dev_run
        ):
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if self.config.fit.get("test_after_fit", True):
            results = self.trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path="best" if best else None
            )
            self._write_test_metrics(results, best)
        self._export_teacher()

    def _export_teacher(self) -> None:
        """A fitted SASRec (any ID model with item vectors) is also a UniGRec teacher: write its
        best item table to the data cache entry that a `teacher:` naming the same YAML reads."""
        from genrec_lightning.modules.baselines import SequentialRecommender
        from genrec_lightning.stages import export_teacher, teacher_key

        data = self.datamodule
        network = getattr(self.model, "network", None)
        if not isinstance(self.model, SequentialRecommender) or not hasattr(network, "item_vectors"):
            return
        if not isinstance(data, SequenceDataModule) or not self.trainer.is_global_zero:
            return
        export_teacher(self.model, self.trainer, data, data.teacher_dir(teacher_key(self.config.fit, data)))

    def after_test(self) -> None:
        from genrec_lightning.modules.base import RecommenderModule

        if isinstance(self.model, RecommenderModule) and not self.trainer.fast_dev_run:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
            self._write_test_metrics([metrics], self.config.test.get("ckpt_path") or "")

    def _write_test_metrics(self, results: list[dict[str, float]], checkpoint: str) -> None:
        """`<log dir>/test_metrics.json`: the test numbers in a file scripts can read (rank 0)."""
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not self.trainer.is_global_zero or not results or log_dir is None:
            return
        payload = {"checkpoint": str(checkpoint), "metrics": {k: float(v) for k, v in results[0].items()}}
        with atomic_file(Path(log_dir) / "test_metrics.json") as tmp:
            tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def before_predict(self) -> None:
        # `genrec predict` writes the ranked lists to a file unless a writer is configured.
        from lightning.pytorch.callbacks import BasePredictionWriter

        from genrec_lightning.callbacks.predictions import TopKWriter
        from genrec_lightning.modules.base import RecommenderModule

        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, BasePredictionWriter)]
        if isinstance(self.model, RecommenderModule) and not writers:
            self.trainer.callbacks.append(TopKWriter())


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


def _config_path(args: list[str]) -> str:
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
    raise SystemExit("genrec tokenize needs --config <tokenizer YAML>, e.g. configs/rqvae.yaml")


def tokenize_command(args: list[str]) -> None:
    """`tokenize`: build (or reuse from the cache) a tokenizer config's semantic IDs; print statistics."""
    from genrec_lightning.modules.tokenizer import format_id_stats
    from genrec_lightning.semantic_ids import SemanticIds
    from genrec_lightning.stages import semantic_ids_dir

    parser = _data_parser(
        "genrec tokenize",
        "Build the semantic-ID artifact of a tokenizer config (trained/fitted once, then cached) "
        "and print its statistics: collision rate, codebook usage and entropy, Table-1 filter "
        "ratios and Figure-1 purity gains.",
    )
    parser.add_argument("--force", type=bool, default=False, help="rebuild even if a cached artifact exists")
    config = _config_path(args)
    cfg = parser.parse_args(_config_section(args))
    data = _sequence_data(parser.instantiate_classes(cfg).data)
    # With --json, stdout is the JSON document only; training output of a build goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if cfg.json else contextlib.nullcontext():
        directory = semantic_ids_dir(config, data, force=cfg.force)
    ids = SemanticIds.load(directory, expect=data.semantic_ids_expectation())
    stats = ids.statistics(data.item_frequencies())
    if cfg.json:
        print(json.dumps({**stats, "artifact_dir": str(directory)}, indent=2))
        return
    print(format_id_stats(stats))
    print(f"semantic IDs: {directory}")


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
    if argv and argv[0] == "tokenize":
        tokenize_command(argv[1:])
        return
    if argv and argv[0] == "report":
        from genrec_lightning.analysis.report import main as report_main

        report_main(argv[1:])
        return
    GenRecCLI(args=None if args is None else argv)


__all__ = ["GenRecCLI", "format_statistics", "main"]
