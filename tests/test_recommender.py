"""GenerativeRecommender: loss, inputs, ID/dataset checks, and `genrec fit/test/predict` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import HashEncoder
from test_tokenizer_stage import scalars

from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.data.datamodules import MovieLensDataModule
from genrec_lightning.losses import token_cross_entropy
from genrec_lightning.modules.base import DATA_KEY
from genrec_lightning.modules.id_table import LEGACY_STATE_KEY, STATE_KEY, ItemIdTable
from genrec_lightning.modules.recommender import GenerativeRecommender
from genrec_lightning.modules.unigrec import UniGRecModule
from genrec_lightning.networks.t5 import T5Recommender
from genrec_lightning.pipeline import attach_upstream
from genrec_lightning.semantic_ids import PAD, ArtifactMismatchError, SemanticIds

ROOT = Path(__file__).resolve().parents[1]
TINY_T5 = dict(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)


def random_ids(dm: MovieLensDataModule, directory: Path, seed: int) -> Path:
    """A semantic-ID artifact for `dm` (random 2-level codes, suffix dedup), as a tokenizer writes it."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 16, (dm.num_items, 2), generator=generator)
    SemanticIds.from_codes(raw, 16, dedup="suffix").save(directory, meta=dm.semantic_ids_expectation())
    return directory


@pytest.fixture(scope="module")
def data(ml100k_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dm = MovieLensDataModule(cache_dir=str(ml100k_cache), encoder=HashEncoder())
    dm.build_artifacts()
    root = tmp_path_factory.mktemp("ids")
    return {
        "cache": ml100k_cache,
        "ids": random_ids(dm, root / "a", 0),
        "other_ids": random_ids(dm, root / "b", 1),
    }


def datamodule(data: dict[str, Any], ids: str = "ids") -> MovieLensDataModule:
    dm = MovieLensDataModule(
        cache_dir=str(data["cache"]), encoder=HashEncoder(), semantic_ids_from=str(data[ids])
    )
    return attach_upstream(dm)


def tiny_model(dm: MovieLensDataModule, **kwargs: Any) -> GenerativeRecommender:
    from functools import partial

    kwargs.setdefault("max_history", dm.max_history)
    model = GenerativeRecommender(
        dm.codebook_sizes, dm.num_items, network=partial(T5Recommender, **TINY_T5), **kwargs
    )
    model.set_semantic_ids(dm.semantic_ids)
    return model


def test_token_cross_entropy_matches_torch_and_a_weighted_loop() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3, 11), torch.randint(3, 11, (4, 3))
    labels[1, 2] = PAD
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)
    torch.testing.assert_close(token_cross_entropy(logits, labels), expected)
    weights = torch.rand(4, 3)
    total, count = 0.0, 0
    for b in range(4):
        for t in range(3):
            if labels[b, t] != PAD:
                total += weights[b, t] * -torch.log_softmax(logits[b, t], -1)[labels[b, t]]
                count += 1
    torch.testing.assert_close(token_cross_entropy(logits, labels, weights), total / count)


def test_training_step_is_cross_entropy_of_the_target_ids(data: dict[str, Any]) -> None:
    dm = datamodule(data)
    model = tiny_model(dm).eval()  # no dropout: two forward passes agree
    batch = dm.split("train").batch(torch.arange(16))
    loss = model.training_step(batch, 0)
    ids = dm.semantic_ids
    labels = ids.tokens(batch["target"])
    tokens = ids.tokens(batch["history"]).flatten(1)
    logits = model.network(tokens, (tokens != PAD).long(), T5Recommender.shift_right(labels))
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(loss, expected)


def test_sum_reduction_is_the_per_sample_token_sum(data: dict[str, Any]) -> None:
    """reduction=sum (UniGRec eq. 13) = L' x the token mean, = a loop summing each sample's tokens."""
    dm = datamodule(data)
    torch.manual_seed(0)
    mean_model = tiny_model(dm).eval()
    sum_model = tiny_model(dm, reduction="sum").eval()
    sum_model.load_state_dict(mean_model.state_dict())
    batch = dm.split("train").batch(torch.arange(16))
    mean_loss, sum_loss = mean_model.training_step(batch, 0), sum_model.training_step(batch, 0)
    tokens = dm.semantic_ids.num_levels
    torch.testing.assert_close(sum_loss, tokens * mean_loss)
    labels = dm.semantic_ids.tokens(batch["target"])
    history = dm.semantic_ids.tokens(batch["history"]).flatten(1)
    logits = sum_model.network(history, (history != PAD).long(), T5Recommender.shift_right(labels))
    per_sample = [
        sum(-torch.log_softmax(logits[b, t], -1)[labels[b, t]] for t in range(tokens)) for b in range(16)
    ]
    torch.testing.assert_close(sum_loss, torch.stack(per_sample).mean())
    assert set(sum_model.weighted_loss_terms) == {"rec"}
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        tiny_model(dm, reduction="max")


def test_encoder_inputs_pad_mask_user_token_and_truncation(
    data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dm = datamodule(data)
    model = tiny_model(dm)
    batch = dm.split("val").batch(torch.arange(4))
    batch["history"][0, :5] = dm.pad_item
    batch["history_mask"][0, :5] = False
    tokens, mask = model.encoder_inputs(batch)
    levels = dm.semantic_ids.num_levels
    assert tokens.shape == (4, dm.max_history * levels)
    assert (tokens[0, : 5 * levels] == PAD).all() and not mask[0, : 5 * levels].any()
    assert torch.equal(
        tokens[mask.bool()], dm.semantic_ids.tokens(batch["history"][batch["history_mask"]]).flatten()
    )

    short = tiny_model(dm, max_history=3)
    with caplog.at_level("WARNING"):
        cut, _ = short.encoder_inputs(batch)
    assert "most recent kept" in caplog.text
    assert torch.equal(cut, tokens[:, -3 * levels :])

    from functools import partial

    network = partial(T5Recommender, num_user_buckets=5, **TINY_T5)
    with_user = GenerativeRecommender(dm.codebook_sizes, dm.num_items, network=network)
    with_user.set_semantic_ids(dm.semantic_ids)
    tokens_u, mask_u = with_user.encoder_inputs(batch)
    assert torch.equal(tokens_u[:, 0], with_user.network.vocab_size + batch["user"] % 5)
    assert torch.equal(tokens_u[:, 1:], tokens) and (mask_u[:, 0] == 1).all()


def test_bad_ids_and_checkpoints_fail_clearly(data: dict[str, Any]) -> None:
    dm = datamodule(data)
    with pytest.raises(ValueError, match="semantic_ids_from"):
        GenerativeRecommender(None, dm.num_items)
    model = tiny_model(dm)
    wrong = SemanticIds.from_codes(torch.zeros(dm.num_items, 3, dtype=torch.long), 4)
    with pytest.raises(ArtifactMismatchError, match="do not match"):
        model.set_semantic_ids(wrong)
    # A checkpoint whose ID table differs from the datamodule's.
    other = tiny_model(datamodule(data, "other_ids"))
    with pytest.raises(ArtifactMismatchError, match="semantic-ID table differs"):
        model.on_load_checkpoint({"state_dict": other.state_dict()})
    # A checkpoint trained on another dataset.
    model._data_identity = dm.semantic_ids_expectation()
    foreign = {"state_dict": model.state_dict(), DATA_KEY: {**model._data_identity, "data_hash": "0" * 16}}
    with pytest.raises(ArtifactMismatchError, match="another dataset"):
        model.on_load_checkpoint(foreign)
    model.on_load_checkpoint({"state_dict": model.state_dict(), DATA_KEY: dict(model._data_identity)})


def test_id_table_policy_and_checkpoints_from_before_the_component(data: dict[str, Any]) -> None:
    """TIGER's table is fixed by the data (a checkpoint on other IDs is refused); UniGRec's follows
    its tokenizer (taken as saved). A state dict with the former `item_id_table` key still loads."""
    dm = datamodule(data)
    model = tiny_model(dm)
    assert model.item_ids.fixed and not UniGRecModule.fixed_ids
    state = model.state_dict()
    assert STATE_KEY in state and LEGACY_STATE_KEY not in state
    legacy = {(LEGACY_STATE_KEY if k == STATE_KEY else k): v for k, v in state.items()}
    fresh = tiny_model(dm)
    fresh.load_state_dict(legacy)
    assert fresh.has_ids and torch.equal(fresh.item_codes(), dm.semantic_ids.codes)
    other = datamodule(data, "other_ids").semantic_ids.codes
    following = ItemIdTable(dm.num_items, dm.codebook_sizes, fixed=False)
    following.store(dm.semantic_ids.codes)
    following.check_saved(other)  # accepted: the model rewrites its own table
    with pytest.raises(ArtifactMismatchError, match="semantic-ID table differs"):
        model.item_ids.check_saved(other)
    own = dm.semantic_ids.codes
    assert model.item_ids.fits(own) and not model.item_ids.fits(own[:, :-1])
    too_big = own.clone()
    too_big[0, -1] = dm.codebook_sizes[-1]
    assert not model.item_ids.fits(too_big)


def tiny_experiment(tmp_path: Path, data: dict[str, Any], ids: str = "ids") -> Path:
    """configs/tiger.yaml shrunk to seconds: tiny T5, a few steps, a prebuilt ID artifact."""
    with open(ROOT / "configs/tiger.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg = copy.deepcopy(cfg)
    cfg["model"]["init_args"]["network"]["init_args"] = dict(TINY_T5)
    cfg["model"]["init_args"]["optimization"]["warmup_steps"] = 2
    init = cfg["data"]["init_args"]
    init.update(
        cache_dir=str(data["cache"]), semantic_ids_from=str(data[ids]), batch_size=64, eval_batch_size=128
    )
    init["encoder"] = {"class_path": "conftest.HashEncoder"}
    trainer = cfg["trainer"]
    trainer.update(max_steps=6, max_epochs=1, limit_train_batches=6, limit_val_batches=2,
                   limit_test_batches=2, limit_predict_batches=2, check_val_every_n_epoch=1,
                   log_every_n_steps=1)  # fmt: skip
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiger.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_selects_by_ndcg_then_tests_and_predicts(tmp_path: Path, data: dict[str, Any]) -> None:
    config = tiny_experiment(tmp_path, data)
    cli = GenRecCLI(args=["fit", "--config", str(config)])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and cli.trainer.checkpoint_callback.monitor == "val/ndcg@10"
    tags = scalars(tmp_path / "runs" / "tiger" / "version_0")
    for tag in ("train/loss", "val/ndcg@10", "val/recall@20", "test/ndcg@10", "test/recall@5",
                "test/head/ndcg@10", "test/tail/recall@10", "test/prefix1/recall@10",
                "test/coverage@10", "test/popularity_bin9/predicted"):  # fmt: skip
        assert tag in tags, f"{tag} not logged"
    assert 0.0 <= tags["test/ndcg@10"][0][1] <= tags["test/recall@10"][0][1] <= 1.0
    assert tags["test/prefix1/recall@10"][0][1] >= tags["test/recall@10"][0][1]

    # `genrec test` on the checkpoint reproduces the test numbers logged after fit.
    tested = GenRecCLI(args=["test", "--config", str(config), "--ckpt_path", best])
    assert tested.trainer.callback_metrics["test/ndcg@10"].item() == pytest.approx(tags["test/ndcg@10"][0][1])
    # Both runs leave the numbers in a file for scripts (benchmarks/experiments.py reads it).
    written_metrics = sorted((tmp_path / "runs" / "tiger").glob("version_*/test_metrics.json"))
    assert len(written_metrics) == 2
    for file in written_metrics:
        saved = json.loads(file.read_text())
        assert saved["metrics"]["test/ndcg@10"] == pytest.approx(tags["test/ndcg@10"][0][1])
        assert saved["checkpoint"].endswith(".ckpt") or saved["checkpoint"] == "best"

    # `genrec predict` writes the ranked lists next to its logs unless a writer is configured.
    main(["predict", "--config", str(config), "--ckpt_path", best])
    written = sorted((tmp_path / "runs" / "tiger").glob("version_*/predictions.parquet"))
    assert len(written) == 1
    out = tmp_path / "top.csv"
    main(["predict", "--config", str(config), "--ckpt_path", best, "--trainer.callbacks+=TopKWriter",
          f"--trainer.callbacks.output_path={out}"])  # fmt: skip
    frame, csv = pl.read_parquet(written[0]), pl.read_csv(out)
    assert csv.drop("score").equals(frame.drop("score"))
    assert (csv["score"] - frame["score"].cast(pl.Float64)).abs().max() < 1e-5
    assert set(frame.columns) == {"user", "user_raw", "rank", "item", "item_raw", "score"}
    assert frame["user"].n_unique() == 2 * 128 and frame.group_by("user").len()["len"].max() == 20
    assert frame.group_by("user").agg(pl.col("item").n_unique())["item"].min() == 20
    assert frame["item"].min() >= 0 and frame["item"].max() < datamodule(data).num_items

    # The same checkpoint with another ID table is refused before any evaluation.
    other = tiny_experiment(tmp_path / "other", data, "other_ids")
    with pytest.raises(ArtifactMismatchError, match="semantic-ID table differs"):
        GenRecCLI(args=["test", "--config", str(other), "--ckpt_path", best])


def test_weights_alone_carry_the_ids(data: dict[str, Any]) -> None:
    """A model restored from a state dict ranks without a datamodule, exactly like the original."""
    from functools import partial

    dm = datamodule(data)
    model = tiny_model(dm).eval()
    fresh = GenerativeRecommender(dm.codebook_sizes, dm.num_items, network=partial(T5Recommender, **TINY_T5))
    assert not fresh.has_ids
    with pytest.raises(RuntimeError, match="no semantic IDs"):
        fresh.item_codes()
    fresh.load_state_dict(model.state_dict())
    assert fresh.has_ids
    batch = dm.split("test").batch(torch.arange(8))
    a, b = model.rank(batch), fresh.eval().rank(batch)
    assert torch.equal(a.items, b.items) and torch.equal(a.codes, dm.semantic_ids.codes[a.items])
