"""Recommender fit/test/predict under DDP: 2 CPU processes (gloo) report exactly what 1 process reports."""

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

from genrec_lightning.cli import GenRecCLI

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def genrec(command: str, config: Path, *extra: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-m", "genrec_lightning", command, "--config", str(config), *extra]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def test_ddp_predict_writes_one_complete_file(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """Each rank ranks its shard of users; rank 0 merges the parts into the single-process file."""
    import polars as pl

    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["limit_predict_batches"] = 1.0
    cfg["data"]["init_args"]["eval_batch_size"] = 100
    config.write_text(yaml.safe_dump(cfg))
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    genrec("predict", config, "--allow_untrained", "true", "--trainer.devices", "1",
           "--trainer.callbacks+=TopKWriter",
           f"--trainer.callbacks.output_path={one}")  # fmt: skip
    genrec("predict", config, "--allow_untrained", "true", "--trainer.devices", "2",
           "--trainer.strategy", "ddp",
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


def test_ddp_fit_from_an_empty_cache_builds_once_tests_exactly_and_resumes_on_one_device(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
) -> None:
    """2 ranks from nothing: the IDs are built once, one TensorBoard run and config.yaml are written,
    the test metrics equal a 1-process test of the same checkpoint, and the run resumes on 1 device."""
    import json

    from test_tokenizer_stage import tiny_config, write_config

    tok = tiny_config(tmp_path, "configs/rqvae.yaml")
    tok["trainer"]["max_epochs"] = 2
    for callback in tok["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "tokenizer_checkpoints")
    tokenizer = write_config(tmp_path, tok)
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["init_args"].update(
        cache_dir=str(tmp_path / "cache"),  # empty: data, embeddings and IDs are all built here
        semantic_ids_from=str(tokenizer),
        encoder={"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}},
        eval_batch_size=100,
    )
    # One epoch of 4 steps (then validation selects the checkpoint); the test covers every user.
    cfg["trainer"].update(max_steps=4, limit_train_batches=4, limit_test_batches=1.0)
    config.write_text(yaml.safe_dump(cfg))
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
    genrec("fit", config, *ddp)

    assert len(list((tmp_path / "cache").rglob("semantic_ids/*/codes.safetensors"))) == 1
    tok_name = tok["trainer"]["logger"]["init_args"]["name"]
    assert len(list((tmp_path / "runs" / tok_name).glob("version_*"))) == 1  # the tokenizer stage
    (run,) = (tmp_path / "runs" / "tiger").glob("version_*")
    # TensorBoard files of one process only (fit and the test after it each open a writer).
    assert len({f.name.split(".")[-2] for f in run.glob("events.out.tfevents.*")}) == 1
    assert (run / "config.yaml").is_file()
    two = json.loads((run / "test_metrics.json").read_text())
    assert scalars(run)["train/loss"][-1][0] == 3

    GenRecCLI(args=["test", "--config", str(config), "--trainer.devices", "1",
                    "--trainer.logger.init_args.name", "one", "--ckpt_path", two["checkpoint"]])  # fmt: skip
    one = json.loads((tmp_path / "runs" / "one" / "version_0" / "test_metrics.json").read_text())
    assert one["metrics"].keys() == two["metrics"].keys()
    for name, value in two["metrics"].items():
        assert value == pytest.approx(one["metrics"][name], abs=1e-6), name
    assert two["metrics"]["test/recall@20"] > 0
    # Per-user outcomes: rank 0 writes every user once, the file a 1-process test writes.
    import polars as pl

    users_two = pl.read_parquet(run / "test_users.parquet")
    users_one = pl.read_parquet(tmp_path / "runs" / "one" / "version_0" / "test_users.parquet")
    assert users_two.height == 943 and users_two["user"].is_unique().all()
    assert users_two.equals(users_one)

    # A checkpoint written by 2 ranks resumes on 1 device and continues from step 4.
    assert two["checkpoint"].endswith("step=4.ckpt")
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    GenRecCLI(args=["fit", "--config", str(config), "--trainer.devices", "1", "--trainer.max_steps", "6",
                    "--trainer.max_epochs", "4", "--test_after_fit", "false",
                    "--trainer.logger.init_args.name", "resumed", "--ckpt_path", last])  # fmt: skip
    # Two more optimiser steps (4 -> 6). Lightning logs them one step later after a resume
    # from an end-of-epoch checkpoint, so count them rather than compare the logged steps.
    assert len(scalars(tmp_path / "runs" / "resumed" / "version_0")["train/loss"]) == 2
    assert torch.load(last, weights_only=False)["global_step"] == 6


def test_ddp_sasrec_test_equals_single_process(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """SASRec (full-softmax top-k ranking) under 2 ranks reports what 1 process reports."""
    import json

    config = ROOT / "configs" / "sasrec.yaml"
    common = ["--data.init_args.cache_dir", str(data["cache"]), "--data.init_args.eval_batch_size", "100",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    # No checkpoint: both runs test the same seeded initial weights (seed_everything in the YAML).
    genrec("test", config, *common, "--trainer.logger.init_args.name", "one", "--trainer.devices", "1",
           "--allow_untrained", "true")  # fmt: skip
    genrec("test", config, *common, "--trainer.logger.init_args.name", "two", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
           "--allow_untrained", "true")  # fmt: skip
    one, two = (json.loads(next((tmp_path / "runs" / name).glob("version_*/test_metrics.json")).read_text())
                for name in ("one", "two"))  # fmt: skip
    assert one["metrics"].keys() == two["metrics"].keys()
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert one["metrics"]["test/recall@20"] > 0
    import polars as pl

    files = [next((tmp_path / "runs" / name).glob("version_*/test_users.parquet")) for name in ("one", "two")]
    users_one, users_two = (pl.read_parquet(f) for f in files)
    assert users_one.height == 943 and users_two.equals(users_one)
