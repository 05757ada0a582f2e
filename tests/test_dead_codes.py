"""Dead-code restarts of the trainable quantizers: which codes, to what, the same on 2 processes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_tokenizer_stage import scalars, tiny_config, write_config

from genrec_lightning.artifacts import config_hash
from genrec_lightning.cli import GenRecCLI
from genrec_lightning.errors import ConfigError
from genrec_lightning.modules.tokenizer import TokenizerModule, usage_warnings
from genrec_lightning.pipeline.keys import _stage_key, plain_config
from genrec_lightning.pipeline.stages import parse_stage, tokenizer_parser
from genrec_lightning.tokenizers.quantizers import (
    ProductQuantizer,
    Quantizer,
    ResidualQuantizer,
    SoftResidualQuantizer,
)

CENTRES = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])


def clustered(n_per: int, seed: int) -> torch.Tensor:
    """Points around the four CENTRES (small noise), so each of four codes there is used."""
    gen = torch.Generator().manual_seed(seed)
    return (CENTRES.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 2, generator=gen)).float()


def planted(quantizer: Quantizer) -> Quantizer:
    """Codes 0-3 of level 0 at the centres, code 4 far away (dead), code 5 at a centre's twin."""
    with torch.no_grad():
        quantizer.codebooks[0, :4] = CENTRES
        quantizer.codebooks[0, 4] = torch.tensor([100.0, 100.0])
        quantizer.codebooks[0, 5] = torch.tensor([0.0, 5.0])  # loses every point to code 2: dead too
    return quantizer.train()


def test_only_the_codes_no_input_chose_are_restarted_onto_inputs_of_their_level() -> None:
    quantizer = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=1))
    x = clustered(8, 0)
    before = quantizer.codebooks.detach().clone()
    quantizer(x)
    assert quantizer.code_counts[0].tolist() == [8, 8, 8, 8, 0, 0]
    dead = quantizer.restart_dead_codes(torch.Generator().manual_seed(0))
    assert dead.tolist() == [[False, False, False, False, True, True]]
    after = quantizer.codebooks.detach()
    assert torch.equal(after[0, :4], before[0, :4])  # live codes untouched
    for code in (4, 5):  # each restarted code is now one of the batch's inputs, distinct ones
        assert (after[0, code] == x).all(dim=1).any()
    assert not torch.equal(after[0, 4], after[0, 5])
    assert quantizer.code_counts.sum() == 0  # a new window starts
    # The restarted codes are used at once: the inputs they copied now choose them (or a tie).
    quantizer(x)
    assert quantizer.code_counts[0, 4:].sum() >= 2


def test_the_threshold_counts_assignments_and_zero_turns_restarts_off() -> None:
    x = clustered(8, 1)
    strict = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=9))
    strict(x)
    assert strict.restart_dead_codes(torch.Generator().manual_seed(0))[0].all()  # 8 < 9: all restarted
    off = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6))
    before = off.codebooks.detach().clone()
    off(x)
    assert off.code_counts.sum() == 0 and not off.restart_dead_codes().any()
    assert torch.equal(off.codebooks.detach(), before)
    evaluating = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=1)).eval()
    evaluating(x)  # encoding for IDs or validation does not count
    assert evaluating.code_counts.sum() == 0 and not evaluating.restart_dead_codes().any()
    with pytest.raises(ConfigError, match="dead_code_threshold must be an int >= 0"):
        ResidualQuantizer(2, dead_code_threshold=-1)


def test_restarts_are_seeded() -> None:
    x = clustered(8, 2)
    books = []
    for seed in (0, 0, 1):
        quantizer = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=1))
        quantizer(x)
        quantizer.restart_dead_codes(torch.Generator().manual_seed(seed))
        books.append(quantizer.codebooks.detach().clone())
    assert torch.equal(books[0], books[1]) and not torch.equal(books[0], books[2])


@pytest.mark.parametrize("kind", ["residual", "soft", "product"])
def test_every_trainable_quantizer_restarts_from_its_own_level_inputs(kind: str) -> None:
    """Level 1 draws from the level-1 inputs: residuals (hard, soft) or the second segment (PQ)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=gen)
    if kind == "residual":
        quantizer: Quantizer = ResidualQuantizer(4, num_levels=2, codebook_size=8, dead_code_threshold=1)
    elif kind == "soft":
        quantizer = SoftResidualQuantizer(
            4, num_levels=2, codebook_size=8, temperature=0.01, dead_code_threshold=1
        )
    else:
        quantizer = ProductQuantizer(4, num_levels=2, codebook_size=8, dead_code_threshold=1)
    quantizer.init_codebooks(x)
    with torch.no_grad():
        quantizer.codebooks[1, 7] = 1e4  # planted dead code at level 1
    quantizer.train()
    out = quantizer(x)
    books = quantizer.codebooks.detach().clone()
    assert quantizer.code_counts.sum(dim=1).tolist() == [64.0, 64.0]
    dead = quantizer.restart_dead_codes(torch.Generator().manual_seed(0))
    assert dead[1, 7]
    restarted = quantizer.codebooks.detach()[1, 7]
    if kind == "product":  # the second latent segment
        level_inputs = x[:, 2:]
    elif kind == "residual":  # x minus the nearest level-0 codeword
        level_inputs = x - books[0][out.codes[:, 0]]
    else:  # x minus the probability-weighted level-0 codeword
        level_inputs = x - out.probs[:, 0].detach() @ books[0]
    assert torch.isclose(level_inputs, restarted, atol=1e-5).all(dim=1).any()


# ----------------------------------------------------------------------------- 2 processes
def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        quantizer = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=1))
        x = clustered(8, 10 + rank)  # each process sees other inputs
        if rank == 1:  # code 5 wins one point on rank 1 only: alive, because counts are summed
            x = torch.cat([x, torch.tensor([[0.0, 4.9]])])
        quantizer(x)
        dead = quantizer.restart_dead_codes(torch.Generator().manual_seed(0))
        torch.save({"dead": dead, "books": quantizer.codebooks.detach(), "x": x}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_restart_the_same_codes_to_the_same_vectors(tmp_path: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=tmp_path, delete=False) as f:
        init = f"file://{f.name}"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_rank, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    zero, one = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert zero["dead"].tolist() == one["dead"].tolist() == [[False] * 4 + [True, False]]
    assert torch.equal(zero["books"], one["books"])
    # Rank 0's batch supplied the new vector: what one process restarting from it computes.
    assert (zero["books"][0, 4] == zero["x"]).all(dim=1).any()
    alone = planted(ResidualQuantizer(2, num_levels=1, codebook_size=6, dead_code_threshold=1))
    alone(zero["x"])
    alone.code_counts[0, 5] = 1  # the count rank 1 contributed
    alone.restart_dead_codes(torch.Generator().manual_seed(0))
    assert torch.equal(alone.codebooks.detach(), zero["books"])


# ----------------------------------------------------------------------------- the stage
def test_tokenizer_stage_restarts_each_epoch_logs_them_and_forgets_their_moments(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, dead_code_threshold=1)
    cfg["model"]["init_args"]["tokenizer"]["init_args"]["quantizer"]["init_args"]["codebook_size"] = 64
    cfg["model"]["init_args"]["kmeans_init"] = False  # random tiny codebooks: most codes start dead
    cli = GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    (run,) = (tmp_path / "runs" / cfg["trainer"]["logger"]["init_args"]["name"]).glob("version_*")
    tags = scalars(run)
    restarted = [value for _, value in tags["train/restarted_codes_l0"]]
    assert len(restarted) == 3 and restarted[0] > 0
    assert restarted[-1] < restarted[0]  # restarted codes stay in use
    assert cli.model.tokenizer.quantizer.code_counts.sum() == 0  # the window closed with the epoch


def test_restarted_codes_lose_their_optimizer_moments() -> None:
    quantizer = ResidualQuantizer(2, num_levels=2, codebook_size=4)
    optimizer = torch.optim.AdamW(quantizer.parameters())
    quantizer.codebooks.grad = torch.ones_like(quantizer.codebooks)
    optimizer.step()
    dead = torch.zeros(2, 4, dtype=torch.bool)
    dead[1, 2] = True
    module = SimpleNamespace(_trainer=object(), trainer=SimpleNamespace(optimizers=[optimizer]))
    TokenizerModule._forget_moments(module, quantizer.codebooks, dead)  # type: ignore[arg-type]
    for name in ("exp_avg", "exp_avg_sq"):
        moment = optimizer.state[quantizer.codebooks][name]
        assert (moment[1, 2] == 0).all() and (moment[~dead] != 0).all()


def test_a_level_using_under_half_its_codes_is_flagged() -> None:
    stats = {"usage": [0.16, 1.0, 0.5], "codebook_sizes": [256, 256, 2]}
    lines = usage_warnings(stats)
    assert len(lines) == 1 and "level 1 uses 16.0% of its 256 codes (41)" in lines[0]
    assert "dead_code_threshold: 1" in lines[0]


def test_the_off_setting_keeps_the_cache_key_of_ids_built_before_restarts_existed(tmp_path: Path) -> None:
    """An upgrade must not rebuild cached IDs that restarts-off reproduces exactly."""
    keys = []
    for extra in ({}, {"dead_code_threshold": 0}, {"dead_code_threshold": 1}):
        config = write_config(tmp_path, tiny_config(tmp_path, **extra), name=f"k{len(keys)}.yaml")
        keys.append(_stage_key(parse_stage(tokenizer_parser(), config, "tokenizer"), ("embedding_dim",), {}))
    assert keys[0] == keys[1] != keys[2]
    parsed = parse_stage(tokenizer_parser(), config, "tokenizer")
    model = plain_config(parsed.model)
    model["init_args"]["tokenizer"]["init_args"]["quantizer"]["init_args"].pop("dead_code_threshold")
    assert config_hash({"model": model}) != config_hash({"model": plain_config(parsed.model)})  # it was there
