"""`genrec` command line: LightningCLI for fit/validate/test/predict plus data subcommands.

    genrec fit --config configs/<experiment>.yaml [--trainer.devices 2 --trainer.strategy ddp]
    genrec data-stats --config configs/data/ml100k.yaml      # Table-2 statistics of a dataset
    genrec prepare --config configs/data/ml100k.yaml         # build every data artifact now
    genrec tokenize --config configs/rqvae.yaml              # build/reuse semantic IDs, print stats
    genrec report runs/tiger/version_0                       # the papers' figures of finished runs

Expected user errors (a missing file, a corrupted artifact, a bad setting, nothing to resume)
print one line naming the problem and the fix and exit 1; `--verbose` or GENREC_VERBOSE=1 shows
the traceback. SIGTERM stops a fit with exit 143 after writing a resumable `last.ckpt`.

Models and datamodules are chosen by class (`--model X --data Y` or `class_path` in YAML); every
constructor argument is an option with its docstring in `--help`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from jsonargparse.typing import import_object
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _InstantiatorFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genrec_lightning import __version__

# Importing the callbacks and datamodules also makes their short names resolvable
# (`--trainer.callbacks+=TopKWriter`, `--data MovieLensDataModule`).
from genrec_lightning import callbacks as _callbacks  # noqa: F401
from genrec_lightning.artifacts import atomic_file
from genrec_lightning.callbacks.resume import ResumeState
from genrec_lightning.checkpoints import (
    LAST,
    check_data,
    check_model_class,
    newest_last_checkpoint,
    read_checkpoint,
    run_dir_of,
)
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.errors import ConfigError, GenRecError, RunError, user_errors_unwrapped
from genrec_lightning.modules.base import DATA_KEY
from genrec_lightning.pipeline import attach_upstream, prepare_tokenizer_run

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
        argv = list(sys.argv[1:] if args is None else args)
        #: The YAML files of the command line: relative paths inside them may be relative to these.
        self.config_files = [Path(p) for p in _config_paths(argv)]
        #: The checkpoint named by --ckpt_path, read before any stage is built (its data is checked
        #: as soon as the datamodule exists, before a link can build semantic IDs).
        self._checkpoint: tuple[Path, dict[str, Any]] | None = None
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
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="test/validate/predict a trainable model without --ckpt_path, i.e. its random initial "
            "weights (a floor for comparisons); refused by default because it is almost always a mistake",
        )

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        # Check a given checkpoint against the datamodule the moment it exists, then let the
        # pipeline build or load what the data declares (semantic IDs, a teacher): this may train
        # a tokenizer, so it runs after the check and before the size links read the data.
        build = _InstantiatorFn(cli=self, key="data")

        def instantiate_data(
            class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any
        ) -> Any:
            datamodule = build(
                class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs
            )
            self._check_checkpoint_data(datamodule)
            return attach_upstream(datamodule)

        self.parser.add_instantiator(instantiate_data, LightningDataModule, subclasses=True, prepend=True)

    def instantiate_classes(self) -> None:
        with user_errors_unwrapped():  # our error, not jsonargparse's union dump of the config
            super().instantiate_classes()

    # ------------------------------------------------------------------ checks before any stage
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        resolve_input_paths(config.get("data"), self.config_files)
        check_model_settings(config.get("model"))
        if self.subcommand is None:
            return
        check_runs_dir(config.trainer)
        if self.subcommand != "fit":
            # Scoring a finished run logs into its directory without touching the fit's config.yaml;
            # the command's own config is kept next to it, replaced by a later score.
            self.save_config_kwargs = {
                **self.save_config_kwargs,
                "config_filename": f"{self.subcommand}_config.yaml",
                "overwrite": True,
            }
        self._resolve_checkpoint(config)

    def _resolve_checkpoint(self, config: Namespace) -> None:
        """`--ckpt_path`: refuse to score an untrained model, find `last`, read and vet the file."""
        subcommand, given = self.subcommand, config.get("ckpt_path")
        class_path = _class_path(config.get("model"))
        if given is None:
            if subcommand != "fit" and _trains(class_path) and not config.get("allow_untrained"):
                raise RunError(
                    f"genrec {subcommand} needs --ckpt_path: {class_path.rsplit('.', 1)[-1]} would be scored "
                    "with untrained weights. Pass a checkpoint (e.g. runs/<name>/version_N/checkpoints/"
                    "<best>.ckpt, or `last` for the newest run's last.ckpt), or --allow_untrained true"
                )
            return
        if given in ("best", "hpc", "registry") or str(given).startswith("registry:"):
            return  # Lightning's own names, resolved inside the trainer
        path = self._find_last(config) if given == "last" else Path(given)
        checkpoint = read_checkpoint(path)
        check_model_class(checkpoint, path, class_path)
        config.ckpt_path = str(path)
        self._checkpoint = (path, {k: checkpoint[k] for k in (DATA_KEY,) if k in checkpoint})
        if subcommand == "fit":
            self._continue_run(config, path)

    def _find_last(self, config: Namespace) -> Path:
        dirpath = _checkpoint_dirpath(config.trainer)
        logger = _logger_init_args(config.trainer)
        if dirpath is not None:
            candidate = Path(dirpath) / LAST
            found = candidate if candidate.is_file() else None
            where = str(candidate)
        elif logger is not None:
            save_dir, name = logger.get("save_dir", "runs"), logger.get("name", "genrec")
            found = newest_last_checkpoint(save_dir, name)
            where = f"{Path(save_dir) / name}/version_*/checkpoints/{LAST}"
        else:
            raise RunError(
                "--ckpt_path last needs a logger or a ModelCheckpoint dirpath to look in; pass a path"
            )
        if found is None:
            raise RunError(
                f"--ckpt_path last: no checkpoint at {where}; start the run without --ckpt_path, "
                "or pass the path of a .ckpt file"
            )
        return found

    def _continue_run(self, config: Namespace, path: Path) -> None:
        """Resuming a checkpoint of `<save_dir>/<name>/version_N` logs on into that same run."""
        logger = _logger_init_args(config.trainer)
        if logger is None or logger.get("version") is not None:
            return
        run = run_dir_of(path, logger.get("save_dir", "runs"), logger.get("name", "genrec"))
        if run is None:
            return
        logger["version"] = int(run.name.split("_", 1)[1])
        # The continued run's settings (e.g. a raised max_epochs) replace the stored config.yaml.
        self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}

    def _check_checkpoint_data(self, datamodule: Any) -> None:
        if self._checkpoint is None:
            return
        path, checkpoint = self._checkpoint
        data = _sequence_data(datamodule)
        if isinstance(data, SequenceDataModule):
            check_data(checkpoint, path, {"dataset": data.reader.name, "data_hash": data.data_hash})

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        from genrec_lightning.callbacks.test_users import TestUsersWriter
        from genrec_lightning.modules.base import RecommenderModule

        trainer = super().instantiate_trainer(**kwargs)
        # Every fit keeps `last.ckpt` at its last step and leaves one behind on SIGTERM. Scoring
        # commands carry it too (it acts only in fit) so a checkpoint's state for it has a taker
        # and Lightning does not warn about a missing callback on every `genrec test`.
        if self.subcommand != "fit" or trainer.checkpoint_callback is not None:
            trainer.callbacks.append(ResumeState())
        # Every test of a recommender (also the one after fit) leaves its per-user outcomes.
        fit_tests = self.subcommand == "fit" and self.config.fit.get("test_after_fit")
        if (
            (self.subcommand == "test" or fit_tests)
            and isinstance(self.model, RecommenderModule)
            and not any(isinstance(cb, TestUsersWriter) for cb in trainer.callbacks)
        ):
            trainer.callbacks.append(TestUsersWriter())
        return trainer

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
        from genrec_lightning.modules.tokenizer import TokenizerModule

        if isinstance(self.model, TokenizerModule) and isinstance(self.datamodule, ItemEmbeddingDataModule):
            prepare_tokenizer_run(self.model, self.config.fit, self.datamodule.data)

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
        from genrec_lightning.pipeline import export_teacher, teacher_key

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


# ---------------------------------------------------------------------------- config checks
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


def _config_section(args: list[str]) -> list[str]:
    """Turn `--config FILE` into `--data <json>` so experiment YAMLs (with model/trainer) also work."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" not in arg and i + 1 >= len(args):
                raise ConfigError("--config needs a YAML file path")
            path = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            i += 1 if "=" in arg else 2
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} does not exist: check the path given to --config")
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict) or "data" not in loaded:
                raise ConfigError(f"{path} has no `data:` section: pass a data or experiment config")
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
    resolve_input_paths(cfg.data, [Path(p) for p in _config_paths(args)])
    with user_errors_unwrapped():
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


def tokenize_command(args: list[str]) -> None:
    """`tokenize`: build (or reuse from the cache) a tokenizer config's semantic IDs; print statistics."""
    from genrec_lightning.modules.tokenizer import format_id_stats
    from genrec_lightning.pipeline import semantic_ids_dir
    from genrec_lightning.semantic_ids import SemanticIds

    parser = _data_parser(
        "genrec tokenize",
        "Build the semantic-ID artifact of a tokenizer config (trained/fitted once, then cached) "
        "and print its statistics: collision rate, codebook usage and entropy, Table-1 filter "
        "ratios and Figure-1 purity gains.",
    )
    parser.add_argument("--force", type=bool, default=False, help="rebuild even if a cached artifact exists")
    configs = _config_paths(args)
    if not configs:
        raise ConfigError("genrec tokenize needs --config <tokenizer YAML>, e.g. configs/rqvae.yaml")
    config = configs[0]
    cfg = parser.parse_args(_config_section(args))
    resolve_input_paths(cfg.data, [Path(p) for p in configs])
    with user_errors_unwrapped():
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


#: Every subcommand with what it does, for `genrec --help` and a bare `genrec`.
COMMANDS: dict[str, str] = {
    "fit": "train a model from a config, then test its best checkpoint (Recall/NDCG)",
    "validate": "score a checkpoint on the validation targets",
    "test": "score a checkpoint on the held-out last items; writes test_metrics.json, test_users.parquet",
    "compare": "paired significance test of runs against runs on the same test users",
    "predict": "write the ranked top-k lists of the test users (predictions.parquet)",
    "prepare": "build every data artifact of a dataset now (splits, item embeddings)",
    "data-stats": "print a dataset's statistics (interactions, users, items, history length)",
    "tokenize": "build or reuse the semantic IDs of a tokenizer config and print their statistics",
    "report": "draw the papers' figures and CSV tables from finished runs",
}


def usage() -> str:
    """The overview printed by `genrec --help` (each subcommand has its own --help)."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"genrec_lightning {__version__}: generative recommendation with semantic IDs",
        "",
        "usage: genrec <command> --config <yaml> [--config <delta yaml>] [--section.option value ...]",
        "",
        "commands:",
        *(f"  {name:{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "options of every command: genrec <command> --help. Other flags:",
        "  --version        print the version",
        "  --verbose        show the traceback of an error (also GENREC_VERBOSE=1)",
        "",
        "example: genrec fit --config configs/tiger_curriculum.yaml --config configs/presets/cpu.yaml",
    ]
    return "\n".join(lines)


def _dispatch(argv: list[str]) -> None:
    command = argv[0]
    if command in DATA_COMMANDS:
        data_command(command, argv[1:])
    elif command == "tokenize":
        tokenize_command(argv[1:])
    elif command == "compare":
        from genrec_lightning.analysis.compare import main as compare_main

        compare_main(argv[1:])
    elif command == "report":
        from genrec_lightning.analysis.report import main as report_main

        report_main(argv[1:])
    else:
        # From the console, LightningCLI reads sys.argv itself (it warns when given both).
        GenRecCLI(args=None if argv == sys.argv[1:] else argv)


def _close_process_group(clean: bool) -> None:
    """Destroy the DDP process group before the interpreter exits.

    Lightning destroys it only for NCCL; a gloo group left alive lets its C++ worker threads be
    torn down by the exit handlers, which aborts the process at random with "terminate called
    without an active exception" (SIGABRT) after the run has finished. The barrier keeps one rank
    from tearing down while another still talks to it.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point (`genrec`, `python -m genrec_lightning`)."""
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv or os.environ.get("GENREC_VERBOSE", "") not in ("", "0")
    if "--verbose" in argv:
        argv = [arg for arg in argv if arg != "--verbose"]
        os.environ["GENREC_VERBOSE"] = "1"  # DDP ranks re-run the command line without the flag
        if args is None:
            sys.argv = [sys.argv[0], *argv]
    from genrec_lightning.output import configure_output

    configure_output(verbose)
    if argv and argv[0] in ("--version", "-V"):
        print(f"genrec_lightning {__version__}")
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return
    clean = False
    try:
        _dispatch(argv)
        clean = True
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit with code 0: a killed run would look done.
        print(
            "genrec: stopped by SIGTERM. Resume with the same command plus --ckpt_path last",
            file=sys.stderr,
        )
        raise SystemExit(143) from None
    except GenRecError as err:
        if verbose:
            raise
        print(f"genrec: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        _close_process_group(clean)


__all__ = ["COMMANDS", "GenRecCLI", "format_statistics", "main", "usage"]
