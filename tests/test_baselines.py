"""ID-based baselines: SASRec / GRU4Rec networks, their LightningModule, most-popular, `genrec` end to end."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.data.datamodules import MovieLensDataModule
from genrec_lightning.modules.baselines import MostPopular, SequentialRecommender
from genrec_lightning.modules.settings import Evaluation
from genrec_lightning.networks.gru4rec import GRU4Rec
from genrec_lightning.networks.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[1]
N = 30  # items in the synthetic tests
H = 8  # max_history


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def left_padded(rows: list[list[int]], width: int, pad: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories as the datamodule gives them: oldest first, padding on the left."""
    history = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            history[i, width - len(row) :] = torch.tensor(row)
    return history, history != pad


def batch_of(rows: list[list[int]], targets: list[int], width: int = H) -> dict[str, torch.Tensor]:
    history, mask = left_padded(rows, width)
    return {
        "history": history,
        "history_mask": mask,
        "target": torch.tensor(targets),
        "user": torch.arange(len(rows)),
    }


ROWS = [[3, 7, 1, 4, 9], [2], [5, 5, 8, 0, 11, 12, 13, 29], [6, 2, 2]]


# ------------------------------------------------------------------------------------------ SASRec
def reference_sasrec(net: SASRec, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same model from torch's own pre-LN TransformerEncoderLayer (weights copied), all positions."""
    d, heads = net.hidden_dim, net.blocks[0].num_heads
    x = net.item_embedding(history) * d**0.5 + net.position_embedding.weight[-history.shape[1] :]
    length = history.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (mask[:, None, :] | torch.eye(length, dtype=torch.bool))
    for block in net.blocks:
        layer = nn.TransformerEncoderLayer(
            d,
            heads,
            block.ffn[0].out_features,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        ).eval()
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(block.qkv.weight)
            layer.self_attn.in_proj_bias.copy_(block.qkv.bias)
            layer.self_attn.out_proj.load_state_dict(block.out.state_dict())
            layer.linear1.load_state_dict(block.ffn[0].state_dict())
            layer.linear2.load_state_dict(block.ffn[3].state_dict())
            layer.norm1.load_state_dict(block.attn_norm.state_dict())
            layer.norm2.load_state_dict(block.ffn_norm.state_dict())
        x = layer(x, src_mask=(~allowed).repeat_interleave(heads, dim=0))
    return net.final_norm(x)


def test_sasrec_matches_torch_transformer_layers() -> None:
    torch.manual_seed(0)
    net = SASRec(N, H, hidden_dim=16, num_blocks=2, num_heads=2, ffn_dim=24).eval()
    history, mask = left_padded(ROWS, H)
    with torch.no_grad():
        states, _ = net.sequence_states(history, mask)
        expected = reference_sasrec(net, history, mask)
        torch.testing.assert_close(states[mask], expected[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net.encode(history, mask), expected[:, -1], atol=1e-5, rtol=1e-5)
        logits = net(history, mask)
    torch.testing.assert_close(
        logits, expected[:, -1] @ net.item_embedding.weight[:N].T, atol=1e-5, rtol=1e-5
    )
    assert logits.shape == (len(ROWS), N) and net.item_embedding.num_embeddings == N + 1


def test_sasrec_is_causal() -> None:
    """Changing the item at position j changes no output before j (and does change the last one)."""
    torch.manual_seed(0)
    net = SASRec(N, H, hidden_dim=16).eval()
    history = torch.randint(0, N, (3, H))
    mask = torch.ones_like(history, dtype=torch.bool)
    with torch.no_grad():
        before, _ = net.sequence_states(history, mask)
        for j in (2, 5, H - 1):
            changed = history.clone()
            changed[:, j] = (changed[:, j] + 1) % N
            after, _ = net.sequence_states(changed, mask)
            torch.testing.assert_close(after[:, :j], before[:, :j])
            assert not torch.allclose(after[:, -1], before[:, -1])


@pytest.mark.parametrize("network", [SASRec, GRU4Rec], ids=["sasrec", "gru4rec"])
def test_padding_does_not_change_the_encoding(network: type[nn.Module]) -> None:
    """A left-padded history encodes like the same history without padding (whatever the pad id)."""
    torch.manual_seed(0)
    net = network(N, H).eval()
    history, mask = left_padded(ROWS, H)
    garbage = torch.where(mask, history, torch.randint(0, N, history.shape))  # padding ids are ignored
    with torch.no_grad():
        padded = net.encode(history, mask)
        torch.testing.assert_close(net.encode(garbage, mask), padded)
        for i, row in enumerate(ROWS):
            alone = torch.tensor([row])
            torch.testing.assert_close(
                net.encode(alone, torch.ones_like(alone, dtype=torch.bool))[0], padded[i]
            )
        # right padding gives the same too
        right = torch.stack([torch.cat([h[m], h[~m]]) for h, m in zip(history, mask, strict=True)])
        right_mask = torch.stack([torch.cat([m[m], m[~m]]) for m in mask])
        torch.testing.assert_close(net.encode(right, right_mask), padded)


@pytest.mark.parametrize("network", [SASRec, GRU4Rec], ids=["sasrec", "gru4rec"])
def test_longer_history_keeps_the_most_recent_items(network: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = network(N, 4).eval()
    history = torch.randint(0, N, (2, 9))
    mask = torch.ones_like(history, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(net.encode(history, mask), net.encode(history[:, -4:], mask[:, -4:]))


@pytest.mark.parametrize("network", [SASRec, GRU4Rec], ids=["sasrec", "gru4rec"])
def test_empty_history_is_finite_in_training_too(network: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = network(N, H).train()
    history, mask = left_padded([[], [4, 5], []], H)
    logits = net(history, mask)
    F.cross_entropy(logits, torch.tensor([1, 2, 3])).backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval()
    with torch.no_grad():
        empty = net.encode(history[:1], mask[:1])
        assert torch.isfinite(empty).all()
        if isinstance(net, GRU4Rec):  # no item seen: the GRU's initial state, logits = output bias
            assert torch.equal(empty, torch.zeros_like(empty))
            torch.testing.assert_close(net(history[:1], mask[:1])[0], net.output.bias)


def test_gru4rec_matches_a_gru_over_the_real_items_only() -> None:
    """Reference: nn.GRU's final state run on each unpadded history; the padded input is not neutral."""
    torch.manual_seed(0)
    net = GRU4Rec(N, H, hidden_dim=12, embedding_dim=10, num_layers=2).eval()
    history, mask = left_padded(ROWS, H)
    with torch.no_grad():
        encoded = net.encode(history, mask)
        for i, row in enumerate(ROWS):
            _, final = net.gru(net.item_embedding(torch.tensor([row])))
            torch.testing.assert_close(encoded[i], final[-1, 0])
        naive = net.gru(net.item_embedding(history))[0][:, -1]  # GRU run over the padding too
    short = mask.sum(1) < H
    assert not torch.allclose(naive[short], encoded[short], atol=1e-4)


# ------------------------------------------------------------------------------ the Lightning module
@pytest.mark.parametrize("network", [SASRec, GRU4Rec], ids=["sasrec", "gru4rec"])
def test_training_step_is_full_softmax_cross_entropy(network: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(N, H, network=network).eval()  # eval: no dropout, deterministic
    assert isinstance(model.network, network)
    batch = batch_of(ROWS, [4, 0, 29, 17])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = model.training_step(batch, 0)
    logits = model.network(batch["history"], batch["history_mask"])
    expected = -logits.log_softmax(-1)[torch.arange(4), batch["target"]].mean()
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["target"]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.network.item_embedding.weight.grad is not None


@pytest.mark.parametrize("network", [SASRec, GRU4Rec], ids=["sasrec", "gru4rec"])
def test_rank_returns_the_top_k_items_by_logit(network: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(
        N, H, network=network, top_k=10, evaluation=Evaluation(metric_ks=(1, 5, 10))
    ).eval()
    batch = batch_of(ROWS, [0, 0, 0, 0])
    with torch.no_grad():
        ranking = model.rank(batch)
        logits = model(batch["history"], batch["history_mask"])
    assert ranking.items.shape == ranking.scores.shape == (len(ROWS), 10)
    assert ranking.codes.shape == (len(ROWS), 10, 1) and bool((ranking.codes == -1).all())
    assert bool((ranking.scores[:, 1:] <= ranking.scores[:, :-1]).all())
    assert bool(((ranking.items >= 0) & (ranking.items < N)).all())
    for row, scores in zip(ranking.items, logits, strict=True):
        assert len(set(row.tolist())) == 10
        assert row.tolist() == sorted(range(N), key=lambda i: -scores[i].item())[:10]  # noqa: B023
    torch.testing.assert_close(ranking.scores, logits.log_softmax(-1).gather(1, ranking.items))


def test_rank_pads_when_top_k_exceeds_the_catalogue() -> None:
    model = SequentialRecommender(5, H, top_k=8, evaluation=Evaluation(metric_ks=(1, 5))).eval()
    with torch.no_grad():
        ranking = model.rank(batch_of([[1, 2]], [3]))
    assert sorted(ranking.items[0, :5].tolist()) == list(range(5))
    assert ranking.items[0, 5:].tolist() == [-1, -1, -1]
    assert bool(torch.isneginf(ranking.scores[0, 5:]).all())


# ------------------------------------------------------------------------------------- most popular
FREQUENCIES = torch.tensor([3, 0, 7, 7, 1, 12, 0, 3, 3, 9, 7, 2], dtype=torch.float64)


def brute_force_top(frequencies: torch.Tensor, k: int) -> list[int]:
    counts = frequencies.tolist()
    return sorted(range(len(counts)), key=lambda i: (-counts[i], i))[:k]


def test_most_popular_ranks_by_count_ties_to_lower_id() -> None:
    model = MostPopular(len(FREQUENCIES), top_k=6, evaluation=Evaluation(metric_ks=(1, 5)))
    model.set_popularity(FREQUENCIES)
    ranking = model.rank(batch_of(ROWS, [0, 1, 2, 3]))
    expected = brute_force_top(FREQUENCIES, 6)
    assert expected == [5, 9, 2, 3, 10, 0]
    assert ranking.items.tolist() == [expected] * len(ROWS)
    assert ranking.scores[0].tolist() == FREQUENCIES[expected].tolist()

    # through setup(): popularity comes from the datamodule's training-split counts
    data = SimpleNamespace(item_frequencies=lambda: FREQUENCIES.flip(0))
    fresh = MostPopular(len(FREQUENCIES), top_k=14, evaluation=Evaluation(metric_ks=(1, 5)))
    fresh._trainer = SimpleNamespace(datamodule=data)  # type: ignore[assignment]
    fresh.setup("test")
    items = fresh.rank(batch_of(ROWS[:1], [0])).items[0].tolist()
    assert items == brute_force_top(FREQUENCIES.flip(0), 12) + [-1, -1]


def test_most_popular_refuses_to_train() -> None:
    model = MostPopular(len(FREQUENCIES))
    with pytest.raises(RuntimeError, match="genrec test --config configs/baselines/most_popular.yaml"):
        model.training_step(batch_of(ROWS, [0, 0, 0, 0]), 0)
    with pytest.raises(RuntimeError, match="nothing to train"):
        model.configure_optimizers()
    with pytest.raises(RuntimeError, match="nothing to train"):
        model.setup("fit")
    with pytest.raises(ValueError, match="expected 12 item frequencies"):
        model.set_popularity(torch.ones(3))


# ------------------------------------------------------------------------------------ end to end
def test_most_popular_test_run_matches_a_brute_force_evaluation(ml100k_cache: Path, tmp_path: Path) -> None:
    options = [
        "--config",
        str(ROOT / "configs/baselines/most_popular.yaml"),
        "--data.init_args.cache_dir",
        str(ml100k_cache),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
    cli = GenRecCLI(args=["test", *options, "--trainer.enable_progress_bar", "false"])
    data = MovieLensDataModule(cache_dir=str(ml100k_cache))
    top = brute_force_top(data.item_frequencies(), 10)
    targets = data.split("test").target_items.tolist()
    hits = [top.index(t) if t in top else None for t in targets]
    recall = sum(h is not None for h in hits) / len(targets)
    ndcg = sum(1 / torch.log2(torch.tensor(h + 2.0)).item() for h in hits if h is not None) / len(targets)
    metrics = cli.trainer.callback_metrics
    assert metrics["test/recall@10"].item() == pytest.approx(recall, abs=1e-6)
    assert metrics["test/ndcg@10"].item() == pytest.approx(ndcg, abs=1e-6)
    # The per-user file holds each user's own rank of the brute-force list.
    users = pl.read_parquet(next((tmp_path / "runs").rglob("test_users.parquet")))
    assert users["target"].to_list() == targets  # the test split is in user order
    top10 = [r if r is not None and r <= 10 else None for r in users["rank"].to_list()]  # lists have 20
    assert top10 == [None if h is None else h + 1 for h in hits]
    with pytest.raises(RuntimeError, match="nothing to train"):
        main(["fit", *options])


def test_sasrec_fit_then_test_from_checkpoint(ml100k_cache: Path, tmp_path: Path) -> None:
    """`genrec fit` on the shipped YAML (5 steps, no item text encoded), then `genrec test --ckpt_path`."""
    common = [
        "--config",
        str(ROOT / "configs/sasrec.yaml"),
        "--data.init_args.cache_dir",
        str(ml100k_cache),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    fit = [
        "--trainer.max_steps",
        "5",
        "--trainer.val_check_interval",
        "5",
        "--trainer.limit_val_batches",
        "1",
    ]
    main(["fit", *common, *fit, "--trainer.log_every_n_steps", "1"])
    run = tmp_path / "runs" / "sasrec" / "version_0"
    tags = scalars(run)
    assert "train/loss" in tags
    (step, ndcg), *_ = tags["val/ndcg@10"]
    assert step == 4 and 0.0 <= ndcg <= 1.0
    checkpoints = list((run / "checkpoints").glob("epoch=*.ckpt"))
    assert len(checkpoints) == 1 and (run / "checkpoints" / "last.ckpt").is_file()

    cli = GenRecCLI(
        args=["test", *common, "--trainer.limit_test_batches", "1", "--ckpt_path", str(checkpoints[0])]
    )
    trained = torch.load(checkpoints[0], weights_only=True)["state_dict"]
    for name, value in cli.model.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    recall = cli.trainer.callback_metrics["test/recall@10"].item()
    assert 0.0 <= recall <= 1.0
