"""Recommender evaluation under DDP: 2 CPU processes (gloo) report exactly what 1 process reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_recommender import ROOT, data, tiny_experiment  # noqa: F401  (module fixture `data`)
from test_tokenizer_stage import scalars

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def genrec(command: str, config: Path, *extra: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-m", "genrec_lightning", command, "--config", str(config), *extra]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def test_ddp_validation_equals_single_process(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["limit_val_batches"] = 1.0  # every user: 943 is odd, so the shards differ in size
    cfg["data"]["init_args"]["eval_batch_size"] = 100
    config.write_text(yaml.safe_dump(cfg))
    genrec("validate", config, "--trainer.logger.init_args.name", "one", "--trainer.devices", "1")
    genrec("validate", config, "--trainer.logger.init_args.name", "two", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")  # fmt: skip
    one = scalars(tmp_path / "runs" / "one" / "version_0")
    two = scalars(tmp_path / "runs" / "two" / "version_0")
    for k in (1, 5, 10, 20):
        for name in (f"val/recall@{k}", f"val/ndcg@{k}"):
            assert two[name][0][1] == pytest.approx(one[name][0][1], abs=1e-6), name
    assert one["val/recall@20"][0][1] > 0  # the comparison is not between two empty evaluations


def test_ddp_predict_writes_one_complete_file(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """Each rank ranks its shard of users; rank 0 merges the parts into the single-process file."""
    import polars as pl

    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["limit_predict_batches"] = 1.0
    cfg["data"]["init_args"]["eval_batch_size"] = 100
    config.write_text(yaml.safe_dump(cfg))
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    genrec("predict", config, "--trainer.devices", "1", "--trainer.callbacks+=TopKWriter",
           f"--trainer.callbacks.output_path={one}")  # fmt: skip
    genrec("predict", config, "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.accelerator", "cpu", "--trainer.callbacks+=TopKWriter",
           f"--trainer.callbacks.output_path={two}")  # fmt: skip
    single, merged = pl.read_parquet(one), pl.read_parquet(two)
    assert single["user"].n_unique() == 943
    assert merged.drop("score").equals(single.drop("score"))
    assert (merged["score"] - single["score"]).abs().max() < 1e-5
    assert not list(tmp_path.glob(".two.parquet.part*"))  # parts cleaned up


def test_ddp_fit_logs_the_curriculum_once_per_step(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """Both ranks follow the same curriculum step; ObjectiveWeights averages the ranks' terms."""
    import math

    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["loss"] = {"class_path": "genrec_lightning.losses.MultiTargetCurriculum",
                                         "init_args": {"decay": 0.1}}  # fmt: skip
    cfg["trainer"].update(max_steps=3, limit_val_batches=1)
    cfg["trainer"]["callbacks"].append(
        {"class_path": "genrec_lightning.callbacks.ObjectiveWeights", "init_args": {"every_n_steps": 1}}
    )
    config.write_text(yaml.safe_dump(cfg))
    genrec("fit", config, "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.accelerator", "cpu", "--test_after_fit", "false")  # fmt: skip
    runs = list((tmp_path / "runs" / "tiger").glob("version_*"))
    assert len(runs) == 1  # rank 0 alone writes TensorBoard
    tags = scalars(runs[0])
    assert [step for step, _ in tags["objectives/alpha_fr"]] == [0, 1, 2]
    factors = [value for _, value in tags["curriculum/factor"]]
    assert factors == pytest.approx([math.exp(-0.1 * s) for s in range(3)], rel=1e-5)
    for (_, fg), (_, fr), (_, o) in zip(tags["objectives/alpha_fg"], tags["objectives/alpha_fr"],
                                        tags["objectives/alpha_or"], strict=True):  # fmt: skip
        assert fg + fr + o == pytest.approx(1.0, abs=1e-5)
