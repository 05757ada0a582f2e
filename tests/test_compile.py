"""`callbacks.Compile`: torch.compile in place, same numbers, same checkpoints, per-module targets."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recommender import data, tiny_experiment  # noqa: F401  (module fixture `data`)
from test_tokenizer_stage import scalars

from genrec_lightning.callbacks.compile import Compile, compiled
from genrec_lightning.cli import GenRecCLI
from genrec_lightning.modules.baselines import MostPopular, SequentialRecommender
from genrec_lightning.modules.tokenizer import TokenizerModule
from genrec_lightning.networks.sasrec import SASRec
from genrec_lightning.tokenizers import RQVAE, RQKMeans


def fit(tmp_path: Path, data: dict[str, Any], name: str, *extra: str) -> GenRecCLI:  # noqa: F811
    config = tiny_experiment(tmp_path / name, data)
    return GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false", *extra])


def test_eager_backend_compiles_in_place_and_changes_no_number(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    plain = fit(tmp_path, data, "plain")
    compiled_run = fit(tmp_path, data, "compiled", "--trainer.callbacks+=Compile",
                       "--trainer.callbacks.backend=eager")  # fmt: skip
    stacks = compiled_run.model.network.compile_targets()
    assert len(stacks) == 2 and all(compiled(stack) for stack in stacks)
    assert not any(compiled(stack) for stack in plain.model.network.compile_targets())
    # Same parameter names (checkpoints interchange) and, with the eager backend, the same run.
    assert plain.model.state_dict().keys() == compiled_run.model.state_dict().keys()
    losses = [
        scalars(tmp_path / name / "runs" / "tiger" / "version_0")["train/loss"]
        for name in ("plain", "compiled")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(compiled_run.model.state_dict()[key], value, rtol=0, atol=0)


def test_compile_targets_per_module() -> None:
    rqvae = TokenizerModule(embedding_dim=8, tokenizer=partial(RQVAE, hidden_dims=[16], latent_dim=4))
    assert rqvae.compile_targets() == [rqvae.tokenizer.encoder, rqvae.tokenizer.decoder]
    assert (
        TokenizerModule(
            embedding_dim=8, tokenizer=partial(RQKMeans, num_levels=2, codebook_size=4)
        ).compile_targets()
        == []
    )
    sasrec = SequentialRecommender(num_items=10, max_history=5, network=SASRec)
    assert sasrec.compile_targets() == [sasrec.network]
    assert MostPopular(num_items=10).compile_targets() == []


def test_a_module_without_targets_runs_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    model = MostPopular(num_items=10)
    Compile().setup(None, model, "fit")  # type: ignore[arg-type]
    assert "names nothing to compile" in caplog.text


@pytest.mark.slow
def test_inductor_fit_matches_eager(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """Generated kernels (C++ on CPU, Triton on CUDA) reorder float sums: close, not identical.
    Dropout is off: inductor draws its masks from its own RNG."""
    no_dropout = ("--model.init_args.network.init_args.dropout", "0.0")
    fit(tmp_path, data, "plain", *no_dropout)
    fit(tmp_path, data, "inductor", *no_dropout, "--trainer.callbacks+=Compile")
    runs = [
        scalars(tmp_path / name / "runs" / "tiger" / "version_0")["train/loss"]
        for name in ("plain", "inductor")
    ]
    for (step_a, a), (step_b, b) in zip(*runs, strict=True):
        assert step_a == step_b and b == pytest.approx(a, rel=1e-3)
