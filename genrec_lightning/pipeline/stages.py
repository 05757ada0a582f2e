"""Running an upstream stage from its YAML: parse it as `genrec fit` would, in an isolated RNG."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from genrec_lightning.config_files import BASE_HELP, expand_bases
from genrec_lightning.modules.baselines import SequentialRecommender
from genrec_lightning.modules.tokenizer import TokenizerModule
from genrec_lightning.pipeline.keys import DEFAULT_SEED
from genrec_lightning.pipeline.legacy import nest_flat_model_settings


def stage_parser(module: type[L.LightningModule], name: str) -> LightningArgumentParser:
    """Parses a stage YAML's model/trainer/seed as `genrec fit` does (its dataset is supplied)."""
    parser = LightningArgumentParser(default_env=False, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_lightning_class_args(L.Trainer, "trainer")
    parser.add_lightning_class_args(module, "model", subclass_mode=True, required=True)
    parser.add_argument("--seed_everything", type=bool | int, default=DEFAULT_SEED)
    parser.add_argument("--base", type=str | None, default=None, help=BASE_HELP)
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


def teacher_parser() -> LightningArgumentParser:
    """Parses a teacher YAML (model: a SequentialRecommender such as SASRec)."""
    return stage_parser(SequentialRecommender, "teacher")


def parse_stage(parser: LightningArgumentParser, path: Path, what: str, *extra: str) -> Namespace:
    if not path.is_file():
        raise FileNotFoundError(f"{what} config {path} does not exist")
    try:
        return parser.parse_args(nest_flat_model_settings([*expand_bases(["--config", str(path)]), *extra]))
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
