"""Mixed precision: `--trainer.precision bf16-mixed` trains and evaluates every module.

On this CPU machine Lightning's bf16-mixed is torch's CPU autocast, which casts the same ops (matmuls,
linear layers, attention) to bfloat16 that CUDA autocast does, so the dtype paths are exercised here;
`-m gpu` repeats the headline fit on CUDA when a GPU is present.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_recommender import data, tiny_experiment  # noqa: F401  (module fixture `data`)
from test_tokenizer_stage import scalars, tiny_config, write_config
from test_unigrec import stages, tiny_unigrec_config  # noqa: F401  (module fixture `stages`)

from genrec_lightning.cli import GenRecCLI
from genrec_lightning.tokenizers.quantizers import SoftResidualQuantizer

BF16 = ["--trainer.precision", "bf16-mixed"]


def finite_losses(run: Path, prefix: str = "train/") -> dict[str, list[tuple[int, float]]]:
    tags = scalars(run)
    losses = {k: v for k, v in tags.items() if k.startswith(prefix) and "loss" in k}
    assert losses, f"no {prefix}*loss* scalars in {run}"
    for tag, values in losses.items():
        assert all(math.isfinite(v) for _, v in values), tag
    return tags


def test_soft_assignment_stays_float32_under_autocast() -> None:
    """At tau = 1e-3 a bf16 distance (8 mantissa bits) would move the softmax; the quantizer
    computes distances and log-softmax in float32 even when autocast hands it bf16 inputs."""
    torch.manual_seed(0)
    quantizer = SoftResidualQuantizer(dim=16, num_levels=3, codebook_size=32, temperature=1e-3)
    x = torch.randn(64, 16).bfloat16()
    reference = quantizer(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = quantizer(x)
    assert mixed.log_probs.dtype == torch.float32 and mixed.probs.dtype == torch.float32
    # Level 0 sees the same float32 distances: identical assignments. Deeper levels' residuals
    # go through the bf16 codeword matmul, so they agree up to that rounding.
    torch.testing.assert_close(mixed.log_probs[:, 0], reference.log_probs[:, 0])
    assert (mixed.codes == reference.codes).float().mean() > 0.95


def test_tokenizer_fit_in_bf16(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "configs/unigrec_pretrain.yaml")
    cfg["trainer"]["max_epochs"] = 2
    GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg)), *BF16])
    runs = list((tmp_path / "runs").glob("*/version_0"))
    assert len(runs) == 1
    tags = finite_losses(runs[0])
    assert 0.0 <= tags["ids/collision_rate"][-1][1] <= 1.0
    assert list((tmp_path / "cache").rglob("semantic_ids/*/codes.safetensors"))


def test_tiger_fit_and_test_in_bf16(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    cli = GenRecCLI(args=["fit", "--config", str(tiny_experiment(tmp_path, data)), *BF16])
    assert cli.trainer.precision == "bf16-mixed"
    run = tmp_path / "runs" / "tiger" / "version_0"
    finite_losses(run)
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test/ndcg@10"] <= metrics["test/recall@10"] <= 1.0


def test_sasrec_fit_and_test_in_bf16(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    with open(Path(__file__).resolve().parents[1] / "configs/sasrec.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"]["cache_dir"] = str(data["cache"])
    cfg["trainer"].update(max_steps=5, val_check_interval=5, limit_val_batches=1, limit_test_batches=1,
                          log_every_n_steps=1, enable_progress_bar=False)  # fmt: skip
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "ckpt")
    path = tmp_path / "sasrec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    GenRecCLI(args=["fit", "--config", str(path), *BF16])
    run = tmp_path / "runs" / "sasrec" / "version_0"
    assert 0.0 <= finite_losses(run)["val/ndcg@10"][0][1] <= 1.0
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["test/recall@10"] >= 0.0


def test_unigrec_fit_and_test_in_bf16(stages: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    cli = GenRecCLI(args=["fit", "--config", str(tiny_unigrec_config(stages, tmp_path)), *BF16])
    run = tmp_path / "runs" / "unigrec" / "version_0"
    tags = finite_losses(run)
    for term in ("train/cd_tokenizer", "train/cd_recommender"):
        assert all(math.isfinite(v) for _, v in tags[term]), term
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["test/recall@10"] >= 0.0
    model = cli.model
    assert torch.equal(model.item_codes()[:, :-1], model.raw_item_codes())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiger_fit_on_cuda_in_bf16(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    args = ["fit", "--config", str(tiny_experiment(tmp_path, data)), *BF16, "--trainer.accelerator", "gpu",
            "--trainer.devices", "1"]  # fmt: skip
    cli = GenRecCLI(args=args)
    assert cli.model.device.type == "cuda"
    run = tmp_path / "runs" / "tiger" / "version_0"
    finite_losses(run)
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["test/recall@10"] >= 0.0
