"""`GenRecCLI`: LightningCLI for fit/validate/test/predict with the project's defaults and checks.

Sizes flow from the datamodule to the model (`SIZE_LINKS`), the config is checked before any
stage runs (`checks`), a `--ckpt_path` is vetted against the model and data before it is loaded,
and a fit ends with the test of its best checkpoint and the files scripts read.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _InstantiatorFn

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
    weights_mismatch,
)
from genrec_lightning.cli.checks import (
    _checkpoint_dirpath,
    _class_path,
    _config_paths,
    _logger_init_args,
    _trains,
    check_model_settings,
    check_runs_dir,
    resolve_input_paths,
)
from genrec_lightning.cli.config_data import sequence_data
from genrec_lightning.config_files import BASE_HELP, expand_bases
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, SequenceDataModule
from genrec_lightning.errors import RunError, user_errors_unwrapped
from genrec_lightning.modules.base import DATA_KEY
from genrec_lightning.pipeline import attach_upstream, prepare_tokenizer_run
from genrec_lightning.pipeline.legacy import nest_flat_model_settings

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
        #: The YAML files of the command line with the bases they build on (`config_files.py`);
        #: relative paths inside them may be relative to these.
        self.config_files = [Path(p) for p in _config_paths(expand_bases(argv))]
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse with every `--config` file's bases stacked in front of it (and options written
        before they moved into a group put in their group, `pipeline/legacy.py`)."""
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        argv = expand_bases(list(sys.argv[1:] if args is None else args))
        self.config = parser.parse_args(nest_flat_model_settings(argv))
        # The bases are merged in by now: the run's saved config.yaml must not name one again
        # (relative to the run directory it would not even exist).
        command = self.config.get("subcommand")
        parsed = self.config.get(command) if command else self.config
        if parsed is not None and parsed.get("base") is not None:
            parsed["base"] = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--base", type=str | None, default=None, help=BASE_HELP)
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

    def _run_subcommand(self, subcommand: str) -> None:
        # A checkpoint of another architecture that did not record its class gets past
        # check_model_class; its weights then fail inside the trainer with torch's key-by-key dump.
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as err:
            path = self._checkpoint[0] if self._checkpoint is not None else None
            mismatch = weights_mismatch(err, path, type(self.model).__name__) if path else None
            if mismatch is None:
                raise
            raise mismatch from err

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
        """Resuming a checkpoint of `<save_dir>/<name>/<version>` logs on into that same run.

        Without a version the checkpoint's `version_N` is taken; with one (the experiment runner
        names runs `seed1`, ...) the checkpoint must lie in that run for it to count as continued.
        """
        logger = _logger_init_args(config.trainer)
        if logger is None:
            return
        version = logger.get("version")
        run = run_dir_of(path, logger.get("save_dir", "runs"), logger.get("name", "genrec"), version)
        if run is None:
            return
        if version is None:
            logger["version"] = int(run.name.split("_", 1)[1])
        # Its checkpoints directory is expected to hold files: Lightning's warning is noise here.
        tail = re.escape(str(Path(run.parent.name, run.name, "checkpoints")))
        warnings.filterwarnings("ignore", message=f"Checkpoint directory .*{tail} exists and is not empty")
        # The continued run's settings (e.g. a raised max_epochs) replace the stored config.yaml.
        self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}

    def _check_checkpoint_data(self, datamodule: Any) -> None:
        if self._checkpoint is None:
            return
        path, checkpoint = self._checkpoint
        data = sequence_data(datamodule)
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
        # one a recommender naming the same config looks up (genrec_lightning.pipeline.tokenize).
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


__all__ = ["SIZE_LINKS", "GenRecCLI"]
