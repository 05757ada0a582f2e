"""The tokenizer stage under DDP: 2 CPU processes (gloo), launched as a user would, by `genrec fit`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_tokenizer_stage import ROOT, scalars, tiny_config, write_config

from genrec_lightning.semantic_ids import SemanticIds, collision_rate

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def genrec_ddp(config: Path, *extra: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "genrec_lightning", "fit", "--config", str(config)]
    command += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_ddp_validation_merges_shards_exactly(tmp_path: Path) -> None:
    """Each rank validates half the items; the merged collision rate is that of the full table."""
    cfg = tiny_config(tmp_path)
    cfg["model"]["init_args"]["use_best_checkpoint"] = False
    cfg["model"]["init_args"]["output_dir"] = str(tmp_path / "ids")
    cfg["data"]["init_args"]["batch_size"] = 100
    cfg["trainer"]["max_epochs"] = 2
    genrec_ddp(write_config(tmp_path, cfg))
    ids = SemanticIds.load(tmp_path / "ids")
    assert ids.is_unique and ids.num_items > 1000
    logged = scalars(tmp_path / "runs" / "rqvae" / "version_0")["val/collision_rate"]
    assert len(logged) == 2
    assert logged[-1][1] == pytest.approx(collision_rate(ids.raw_codes))
