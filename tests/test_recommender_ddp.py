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
