"""The shared setting groups (`modules/settings.py`): checks, checkpoints, and the former flat names."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import Namespace

from genrec_lightning.cli import main
from genrec_lightning.errors import ConfigError
from genrec_lightning.modules.baselines import SEQUENTIAL_OPTIMIZATION, MostPopular, SequentialRecommender
from genrec_lightning.modules.settings import (
    Evaluation,
    Optimization,
    as_group,
    flatten_groups,
    nest_flat_settings,
)
from genrec_lightning.pipeline import keys
from genrec_lightning.pipeline.legacy import nest_flat_model_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Optimization(lr=0.0), "lr must be positive"),
        (lambda: Optimization(weight_decay=-1.0), "weight_decay must be >= 0"),
        (lambda: Optimization(warmup_steps=-2), "warmup_steps must be >= 0"),
        (lambda: Optimization(min_lr_ratio=1.5), "min_lr_ratio must be in [0, 1]"),
        (lambda: Evaluation(metric_ks=()), "metric_ks must be positive"),
        (lambda: Evaluation(metric_ks=(0, 5)), "metric_ks must be positive"),
        (lambda: Evaluation(head_fraction=1.0), "head_fraction must be in (0, 1)"),
        (lambda: Evaluation(coverage_k=0), "coverage_k must be >= 1"),
        (
            lambda: as_group({"lr": 1e-3, "momentum": 0.9}, Optimization),
            "optimization has no option momentum",
        ),
    ],
)
def test_groups_check_their_ranges_in_one_line(build, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        build()
    assert "\n" not in str(err.value)


def test_groups_come_from_mappings_over_a_default() -> None:
    base = Optimization(lr=5e-3, weight_decay=0.05)
    assert as_group({"lr": 1e-2}, Optimization, base) == Optimization(lr=1e-2, weight_decay=0.05)
    assert as_group(Namespace(metric_ks=[1, 10]), Evaluation) == Evaluation(metric_ks=(1, 10))
    assert as_group(None, Optimization, base) is base
    assert Evaluation(metric_ks=[5, 10]).metric_ks == (5, 10)  # YAML lists and tuples compare equal


def test_flat_options_nest_into_their_group_and_back() -> None:
    flat = {"lr": 0.1, "beam_size": 20, "metric_ks": [1, 5], "optimization": {"warmup_steps": 3}}
    nested, moved = nest_flat_settings(flat)
    assert sorted(moved) == ["lr", "metric_ks"]
    assert nested == {
        "beam_size": 20,
        "optimization": {"warmup_steps": 3, "lr": 0.1},
        "evaluation": {"metric_ks": [1, 5]},
    }
    assert flatten_groups(nested) == {"beam_size": 20, "warmup_steps": 3, "lr": 0.1, "metric_ks": [1, 5]}
    only_optimizer, moved = nest_flat_settings({"lr": 0.1, "metric_ks": [1]}, ["optimization"])
    assert only_optimizer == {"optimization": {"lr": 0.1}, "metric_ks": [1]} and moved == ["lr"]


def test_checkpoints_hold_plain_groups_and_rebuild_the_model(tmp_path: Path) -> None:
    """hparams hold the groups as mappings: a checkpoint loads with weights_only=True and
    `load_from_checkpoint` rebuilds the same settings; the ID baselines keep their own default."""
    model = SequentialRecommender(30, 5, optimization=Optimization(lr=2e-3, weight_decay=0.1), top_k=10,
                                  evaluation=Evaluation(metric_ks=(1, 10), coverage_k=5))  # fmt: skip
    assert model.hparams["optimization"] == {
        "lr": 2e-3,
        "weight_decay": 0.1,
        "warmup_steps": 500,
        "min_lr_ratio": 0.0,
    }
    assert model.hparams_initial["evaluation"] == {
        "metric_ks": [1, 10],
        "head_fraction": 0.5,
        "coverage_k": 5,
    }
    assert SequentialRecommender(30, 5).optimization == SEQUENTIAL_OPTIMIZATION
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, path)  # fmt: skip
    assert torch.load(path, weights_only=True)["hyper_parameters"]["optimization"]["lr"] == 2e-3
    loaded = SequentialRecommender.load_from_checkpoint(path)
    assert loaded.optimization == model.optimization and loaded.evaluation == model.evaluation
    assert loaded.metric_ks == (1, 10) and loaded.coverage_k == 5
    assert MostPopular(30).optimization is None  # learns nothing: no optimiser settings


def test_a_checkpoint_with_flat_settings_says_which_are_not_applied(tmp_path: Path) -> None:
    model = SequentialRecommender(30, 5)
    old = {k: v for k, v in model.hparams.items() if k not in ("optimization", "evaluation")}
    old |= {"lr": 0.5, "weight_decay": 0.0, "metric_ks": [1, 5, 10, 20]}  # only lr differs
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old,
                "pytorch-lightning_version": L.__version__}, path)  # fmt: skip
    with pytest.warns(UserWarning, match=r"optimization\.lr: saved 0\.5, used 0\.001") as caught:
        SequentialRecommender.load_from_checkpoint(path)
    assert not any("weight_decay" in str(w.message) or "metric_ks" in str(w.message) for w in caught)


def print_config(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    return yaml.safe_load(out.getvalue())


def test_a_config_with_the_former_flat_names_still_runs_the_same(tmp_path: Path) -> None:
    """An earlier run's config.yaml (flat `lr`, `metric_ks`, ...) and the same options on the
    command line parse to the grouped settings, with a FutureWarning naming the new spelling."""
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump({"model": {"init_args": {"lr": 0.02, "metric_ks": [1, 10], "beam_size": 25}}})
    )
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"model": {"init_args": {
        "optimization": {"lr": 0.02}, "evaluation": {"metric_ks": [1, 10]}, "beam_size": 25}}}))  # fmt: skip
    tiger = str(ROOT / "configs/tiger.yaml")
    expected = print_config("--config", tiger, "--config", str(new))
    with pytest.warns(FutureWarning, match=r"model\.init_args\.\{optimization\.lr, evaluation\.metric_ks\}"):
        assert print_config("--config", tiger, "--config", str(old)) == expected
    with pytest.warns(FutureWarning, match="now grouped"):
        flat_cli = print_config("--config", tiger, "--model.init_args.lr=0.02", "--model.init_args.metric_ks",
                                "[1, 10]", "--model.init_args.beam_size", "25")  # fmt: skip
    assert flat_cli == expected
    assert expected["model"]["init_args"]["optimization"]["weight_decay"] == 0.05  # the base's, kept


def test_a_tokenizer_keeps_its_flat_options() -> None:
    """TokenizerModule has no groups: its `lr` is not moved, and no warning is raised."""
    args = ["--config", str(ROOT / "configs/rqvae.yaml"), "--model.init_args.lr", "0.01"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nest_flat_model_settings(args) == args


def test_stage_cache_keys_do_not_depend_on_the_grouping() -> None:
    """A teacher config keyed before the groups (flat) and after (nested) shares its cache entry."""
    common = {"class_path": "genrec_lightning.modules.baselines.SequentialRecommender"}
    flat = Namespace(model={**common, "init_args": {"lr": 1e-3, "weight_decay": 0.0, "metric_ks": [1, 5]}},
                     trainer=Namespace(max_epochs=3))  # fmt: skip
    nested = Namespace(model={**common, "init_args": {"optimization": {"lr": 1e-3, "weight_decay": 0.0},
                                                      "evaluation": {"metric_ks": [1, 5]}}},
                       trainer=Namespace(max_epochs=3))  # fmt: skip
    other = Namespace(model={**common, "init_args": {"optimization": {"lr": 2e-3, "weight_decay": 0.0},
                                                     "evaluation": {"metric_ks": [1, 5]}}},
                      trainer=Namespace(max_epochs=3))  # fmt: skip
    key = keys._stage_key(flat, keys.TEACHER_LINKED, {"data_hash": "h"})
    assert keys._stage_key(nested, keys.TEACHER_LINKED, {"data_hash": "h"}) == key
    assert keys._stage_key(other, keys.TEACHER_LINKED, {"data_hash": "h"}) != key
