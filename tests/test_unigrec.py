"""UniGRec: distillation losses vs references, soft inputs, gradients, ID re-derivation, stages, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import HashEncoder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genrec_lightning.cli import GenRecCLI
from genrec_lightning.data.datamodules import MovieLensDataModule
from genrec_lightning.losses.distillation import info_nce, masked_mean, symmetric_info_nce, symmetric_kl
from genrec_lightning.modules.settings import Optimization
from genrec_lightning.modules.unigrec import UniGRecModule
from genrec_lightning.pipeline import attach_upstream, load_teacher, teacher_dir
from genrec_lightning.semantic_ids import ArtifactMismatchError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ losses (plain torch)
def test_symmetric_kl_is_zero_for_equal_and_matches_a_loop() -> None:
    torch.manual_seed(0)
    log_p = torch.randn(4, 3, 5).log_softmax(-1)
    log_q = torch.randn(4, 3, 5).log_softmax(-1)
    assert symmetric_kl(log_p, log_p).item() == pytest.approx(0.0, abs=1e-7)
    total = 0.0
    for b in range(4):
        for level in range(3):
            p, q = log_p[b, level].exp(), log_q[b, level].exp()
            kl_pq = sum(float(p[k] * (p[k].log() - q[k].log())) for k in range(5))
            kl_qp = sum(float(q[k] * (q[k].log() - p[k].log())) for k in range(5))
            total += kl_pq + kl_qp
    assert symmetric_kl(log_p, log_q).item() == pytest.approx(total / 4, rel=1e-5)
    ref = F.kl_div(log_q, log_p, log_target=True, reduction="sum") + F.kl_div(
        log_p, log_q, log_target=True, reduction="sum"
    )
    assert symmetric_kl(log_p, log_q).item() == pytest.approx(ref.item() / 4, rel=1e-5)


def test_info_nce_matches_a_brute_force_loop() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    tau = 0.07
    total = 0.0
    for i in range(5):
        sims = [float(F.cosine_similarity(a[i], b[j], dim=0)) / tau for j in range(5)]
        total += -(sims[i] - torch.logsumexp(torch.tensor(sims), 0).item())
    assert info_nce(a, b, tau).item() == pytest.approx(total / 5, rel=1e-5)
    assert symmetric_info_nce(a, b, tau).item() == pytest.approx(
        info_nce(a, b, tau).item() + info_nce(b, a, tau).item(), rel=1e-6
    )
    # Rows with the same target item are not each other's negatives.
    labels = torch.tensor([0, 1, 0, 2, 3])
    total = 0.0
    for i in range(5):
        keep = [j for j in range(5) if j == i or labels[j] != labels[i]]
        sims = torch.tensor([float(F.cosine_similarity(a[i], b[j], dim=0)) / tau for j in keep])
        total += -(sims[keep.index(i)] - torch.logsumexp(sims, 0)).item()
    assert info_nce(a, b, tau, labels).item() == pytest.approx(total / 5, rel=1e-5)


def test_masked_mean_ignores_padding() -> None:
    states = torch.randn(2, 4, 3)
    mask = torch.tensor([[False, True, True, True], [False, False, False, True]])
    out = masked_mean(states, mask)
    assert torch.allclose(out[0], states[0, 1:].mean(0)) and torch.allclose(out[1], states[1, 3])


# ------------------------------------------------------------------------------ tiny stages
def tiny_stage_configs(tmp_path: Path) -> dict[str, Path]:
    """Shipped stage-1 and teacher YAMLs shrunk to seconds (8-d hash embeddings, few steps)."""
    cache = str(tmp_path / "cache")
    encoder = {"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}}
    with open(ROOT / "configs/unigrec_pretrain.yaml") as f:
        pre = yaml.safe_load(f)
    pre["data"]["init_args"]["data"]["init_args"].update(cache_dir=cache, encoder=encoder)
    tok = pre["model"]["init_args"]["tokenizer"]["init_args"]
    tok["hidden_dims"], tok["latent_dim"] = [16], 8
    tok["quantizer"]["init_args"].update(num_levels=2, codebook_size=16)
    pre["trainer"].update(max_epochs=4, check_val_every_n_epoch=2, enable_progress_bar=False)
    pre["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    with open(ROOT / "configs/sasrec.yaml") as f:
        teacher = yaml.safe_load(f)
    teacher["model"]["init_args"]["network"]["init_args"]["hidden_dim"] = 16
    teacher["data"]["init_args"].update(cache_dir=cache, encoder=encoder)
    teacher["trainer"].update(
        max_epochs=1, limit_train_batches=5, limit_val_batches=1, enable_progress_bar=False
    )
    teacher["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    teacher["trainer"]["callbacks"] = teacher["trainer"]["callbacks"][:1]
    teacher["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "teacher_ckpt")
    paths = {"pretrain": tmp_path / "pretrain.yaml", "teacher": tmp_path / "teacher.yaml"}
    paths["pretrain"].write_text(yaml.safe_dump(pre))
    paths["teacher"].write_text(yaml.safe_dump(teacher))
    return paths


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("unigrec")
    paths = tiny_stage_configs(tmp)
    dm = MovieLensDataModule(
        cache_dir=str(tmp / "cache"),
        encoder=HashEncoder(dim=8),
        semantic_ids_from=str(paths["pretrain"]),
        teacher_from=str(paths["teacher"]),
        batch_size=16,
        eval_batch_size=64,
    )
    attach_upstream(dm)
    dm.prepare_data()
    dm.setup("fit")
    return {"tmp": tmp, "paths": paths, "dm": dm}


def tiny_module(dm: MovieLensDataModule, **kwargs: Any) -> UniGRecModule:
    network = {"d_model": 16, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_encoder_layers": 1,
               "num_decoder_layers": 1, "dropout": 0.0}  # fmt: skip
    from functools import partial

    from genrec_lightning.networks.t5 import T5Recommender

    args = {
        "codebook_sizes": dm.codebook_sizes,
        "num_items": dm.num_items,
        "max_history": dm.max_history,
        "tokenizer_config": dm.tokenizer_config,
        "teacher_dim": dm.teacher_dim,
        "network": partial(T5Recommender, **network),
        "beam_size": 20,
        "tokenizer_distill_weight": 0.01,
        "recommender_distill_weight": 0.1,
        "assignment_temperature": 1.0,
        **kwargs,
    }
    model = UniGRecModule(**args)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    trainer.strategy.connect(model)
    trainer.datamodule = dm  # setup() reads the datamodule through the trainer
    model.trainer = trainer
    model.setup("fit")
    return model


def optimizer_groups(model: UniGRecModule, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setattr(L.Trainer, "estimated_stepping_batches", property(lambda self: 100))
    return model.configure_optimizers()["optimizer"].param_groups


def batch_of(dm: MovieLensDataModule, size: int = 8) -> dict[str, torch.Tensor]:
    return dm.split("train").batch(torch.arange(size) * 50)


def test_stage_artifacts_carry_tokenizer_weights_and_teacher_meta(stages: dict[str, Any]) -> None:
    dm = stages["dm"]
    assert (dm.semantic_ids_path / "tokenizer.safetensors").is_file()
    assert dm.tokenizer_config["class_path"].endswith("TokenizerModule")
    directory = teacher_dir(stages["paths"]["teacher"], dm)
    vectors = load_teacher(directory, dm)
    assert vectors.shape == (dm.num_items, 16) and dm.teacher_dim == 16
    meta = yaml.safe_load((directory / "meta.json").read_text())
    assert meta["split"] == "train" and meta["data_hash"] == dm.data_hash
    other = MovieLensDataModule(cache_dir=str(stages["tmp"] / "cache"), encoder=HashEncoder(dim=8),
                                min_user_interactions=10)  # fmt: skip
    with pytest.raises(ArtifactMismatchError, match="another dataset/split"):
        load_teacher(directory, other)


def test_one_hot_soft_inputs_equal_the_embedding_lookup(stages: dict[str, Any]) -> None:
    dm = stages["dm"]
    model = tiny_module(dm, tokenizer_distill_weight=0.0, recommender_distill_weight=0.0)
    items = torch.arange(12)
    codes = model.raw_item_codes()[items]
    probs = F.one_hot(codes, model.tokenizer.codebook_size).float()
    # Replace the tokenizer's soft assignment with one-hot vectors of the hard IDs.
    real = model.tokenizer.forward

    def one_hot_forward(z: torch.Tensor) -> Any:
        out = real(z)
        out.probs = probs
        return out

    model.tokenizer.forward = one_hot_forward
    soft, _ = model.item_input_embeddings(items)
    lookup = model.network.embedding(codes + model.token_offsets[: model.num_rq_levels])
    assert torch.allclose(soft, lookup, atol=1e-6)


def test_rec_loss_reaches_the_tokenizer_unless_frozen(
    stages: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = stages["dm"]
    batch = batch_of(dm)
    model = tiny_module(dm, tokenizer_distill_weight=0.0, recommender_distill_weight=0.0, recon_weight=0.0,
                        temperature=0.5)  # fmt: skip
    loss, _ = model.joint_loss(batch)
    loss.backward()
    grads = [p.grad for p in model.tokenizer.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    frozen = tiny_module(
        dm, train_tokenizer=False, tokenizer_distill_weight=0.0, recommender_distill_weight=0.0
    )
    loss, _ = frozen.joint_loss(batch)
    loss.backward()
    assert all(p.grad is None for p in frozen.tokenizer.parameters())
    assert frozen.network.embedding.weight.grad is not None
    names = {g["name"] for g in optimizer_groups(frozen, monkeypatch)}
    assert names == {"recommender", "recommender_no_decay"}


def test_padded_positions_change_no_loss(stages: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    dm = stages["dm"]
    model = tiny_module(dm).eval()
    batch = batch_of(dm)
    assert not bool(batch["history_mask"].all())  # the batch has padding
    with torch.no_grad():
        before = model.joint_loss(batch)[1]
        real = model.soft_encoder_inputs

        def noisy_padding(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            out = real(*args, **kwargs)
            padded = (out["attention"] == 0).unsqueeze(-1)
            out["embeds"] = out["embeds"] + padded * 10.0 * torch.randn_like(out["embeds"])
            return out

        monkeypatch.setattr(model, "soft_encoder_inputs", noisy_padding)
        after = model.joint_loss(batch)[1]
    for name in ("rec_loss", "cd_tokenizer", "cd_recommender", "recon_loss"):
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-5, abs=1e-6), name


def test_adapters_are_optimised_with_their_own_learning_rates(
    stages: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_module(stages["dm"], optimization=Optimization(lr=1e-3), tokenizer_lr=1e-7)
    groups = optimizer_groups(model, monkeypatch)
    optimised = {id(p): g for g in groups for p in g["params"]}
    for adapter in (model.encoder_adapter, model.teacher_adapter, model.decoder_adapter):
        for p in adapter.parameters():
            assert id(p) in optimised and optimised[id(p)]["initial_lr"] == 1e-3
    for p in model.tokenizer.parameters():
        assert optimised[id(p)]["initial_lr"] == 1e-7 and optimised[id(p)]["name"].startswith("tokenizer")
    assert len(optimised) == len(list(model.parameters()))
    # the distillation terms drive the adapters
    loss, terms = model.joint_loss(batch_of(stages["dm"]))
    (terms["cd_tokenizer"] + terms["cd_recommender"]).backward()
    for adapter in (model.encoder_adapter, model.teacher_adapter, model.decoder_adapter):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_rederived_ids_stay_unique(stages: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    dm = stages["dm"]
    model = tiny_module(dm, suffix_capacity=dm.num_items)
    for seed in range(3):
        with torch.no_grad():  # move the tokenizer, as joint training does
            torch.manual_seed(seed)
            for p in model.tokenizer.parameters():
                p.add_(0.3 * torch.randn_like(p))
        model._ids_step = None
        model.refresh_semantic_ids()
        raw = model.raw_item_codes()
        table = model.item_codes().clone()
        assert torch.equal(table[:, :-1], raw)
        assert len(torch.unique(table, dim=0)) == dm.num_items
        # stable: re-deriving unchanged weights gives the same table
        model._ids_step = None
        model.refresh_semantic_ids()
        assert torch.equal(model.item_codes(), table)
    # A collision group beyond the suffix vocabulary keeps the previous (unique) table.
    small = tiny_module(dm)
    before = small.item_codes().clone()
    with torch.no_grad():
        small.tokenizer.quantizer.codebooks[0].copy_(small.tokenizer.quantizer.codebooks[0][:1].clone())
    small._ids_step = None
    small.refresh_semantic_ids()
    assert "keeping the previous ID table" in caplog.text
    assert torch.equal(small.item_codes(), before) and len(torch.unique(before, dim=0)) == dm.num_items


def test_config_errors_are_clear(stages: dict[str, Any]) -> None:
    dm = stages["dm"]
    with pytest.raises(ValueError, match="need a teacher"):
        tiny_module(dm, teacher_dim=None)
    with pytest.raises(ValueError, match="rebuilds its tokenizer"):
        tiny_module(dm, tokenizer_config=None)
    with pytest.raises(ValueError, match="dedup suffix"):
        tiny_module(dm, codebook_sizes=dm.codebook_sizes[:-1])


# ------------------------------------------------------------------------------ end to end
def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tiny_data_args(stages: dict[str, Any]) -> dict[str, Any]:
    """Datamodule options of a tiny experiment on the module's stages (8-d hash encoder, stage-1 IDs)."""
    return {
        "cache_dir": str(stages["tmp"] / "cache"),
        "encoder": {"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}},
        "semantic_ids_from": str(stages["paths"]["pretrain"]),
        "batch_size": 32,
        "eval_batch_size": 128,
    }


def tiny_unigrec_config(stages: dict[str, Any], tmp_path: Path, **model_args: Any) -> Path:
    """configs/unigrec.yaml shrunk to seconds on the module's tiny stages: 2 epochs of 4 steps."""
    with open(ROOT / "configs/unigrec.yaml") as f:
        cfg = yaml.safe_load(f)
    net = cfg["model"]["init_args"]["network"]["init_args"]
    net.update(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)
    cfg["model"]["init_args"].update(beam_size=20, assignment_temperature=1.0, **model_args)
    cfg["model"]["init_args"]["optimization"]["warmup_steps"] = 2
    cfg["data"]["init_args"].update(tiny_data_args(stages), teacher_from=str(stages["paths"]["teacher"]))
    limits = {"limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2}
    cfg["trainer"].update(max_epochs=2, check_val_every_n_epoch=1, log_every_n_steps=1, **limits)
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "ckpt")
    path = tmp_path / "unigrec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_genrec_fit_unigrec_end_to_end(stages: dict[str, Any], tmp_path: Path) -> None:
    """`genrec fit --config configs/unigrec.yaml` (shrunk): stages reused, joint training, test metrics."""
    path = tiny_unigrec_config(stages, tmp_path)
    stage_runs = sorted((stages["tmp"] / "runs").glob("*/version_*"))
    cli = GenRecCLI(args=["fit", "--config", str(path)])
    assert sorted((stages["tmp"] / "runs").glob("*/version_*")) == stage_runs  # both stages reused
    model = cli.model
    assert isinstance(model, UniGRecModule) and model.hparams.teacher_dim == 16
    assert cli.trainer.global_step == 8
    run = tmp_path / "runs" / "unigrec" / "version_0"
    tags = scalars(run)
    for tag in ("train/rec_loss", "train/recon_loss", "train/cd_tokenizer", "train/cd_recommender",
                "val/ndcg@10", "test/ndcg@10", "ids/collision_rate", "ids/entropy_l0",
                "ids/change_rate_l0", "ids/changed_since_start_levels0"):  # fmt: skip
        assert tag in tags, f"{tag} missing"
    # GradientShares (configs/unigrec.yaml): each weighted term's share of T5's gradient norm, at step 0
    shares = {tag: values for tag, values in tags.items() if tag.startswith("train/grad_share/")}
    terms = ("rec", "recon", "cd_tokenizer", "cd_recommender")
    assert set(shares) == {f"train/grad_share/{t}" for t in terms}
    assert sum(values[0][1] for values in shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert shares["train/grad_share/recon"][0][1] == 0.0  # the reconstruction never reaches T5
    assert shares["train/grad_share/rec"][0][1] > 0
    metrics = yaml.safe_load((run / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test/recall@10"] <= 1.0
    # The tested checkpoint decodes the IDs its own tokenizer assigns.
    assert torch.equal(model.item_codes()[:, :-1], model.raw_item_codes())


# ------------------------------------------------------------------------------ DDP
class RankSnapshots(L.Callback):
    """Saves each rank's ID table and tokenizer weights at the first step and the end of every epoch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def save(self, trainer: L.Trainer, model: UniGRecModule, when: str) -> None:
        state = {
            "ids": model.item_codes().cpu(),
            "raw": model.raw_item_codes().cpu(),
            "tokenizer": {k: v.detach().cpu().clone() for k, v in model.tokenizer.state_dict().items()},
            "t5": {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}_{when}.pt")

    def on_train_batch_start(
        self, trainer: L.Trainer, model: UniGRecModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:  # after the module's epoch-start re-derivation
            self.save(trainer, model, "start")

    def on_train_epoch_end(self, trainer: L.Trainer, model: UniGRecModule) -> None:
        self.save(trainer, model, "end")


def test_ddp_fit_keeps_ranks_identical_and_freezes_the_tokenizer(
    stages: dict[str, Any], tmp_path: Path
) -> None:
    """2 gloo ranks: the same re-derived IDs and tokenizer on both; from freeze_tokenizer_epoch on only
    T5 moves (DDP accepts the zero-weighted terms; no unused-parameter error)."""
    import os
    import subprocess
    import sys

    if not torch.distributed.is_available():
        pytest.skip("needs torch.distributed")
    path = tiny_unigrec_config(stages, tmp_path, tokenizer_lr=1e-4, freeze_tokenizer_epoch=1)
    snapshots = tmp_path / "snapshots"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-m", "genrec_lightning", "fit", "--config", str(path),
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
            "--trainer.callbacks+=test_unigrec.RankSnapshots",
            f"--trainer.callbacks.out_dir={snapshots}"]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    # Rank 0 wrote the test metrics after the DDP fit (trainer.log_dir is a collective there).
    assert list((tmp_path / "runs" / "unigrec").glob("version_*/test_metrics.json"))

    def snap(rank: int, epoch: int, when: str) -> dict[str, Any]:
        return torch.load(snapshots / f"rank{rank}_epoch{epoch}_{when}.pt")

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    for epoch in (0, 1):
        for when in ("start", "end"):
            zero, one = snap(0, epoch, when), snap(1, epoch, when)
            assert torch.equal(zero["ids"], one["ids"]), (epoch, when)
            assert same(zero["tokenizer"], one["tokenizer"]) and same(zero["t5"], one["t5"])
            # The decoded table is the tokenizer's current hard IDs (+ suffix), unique per item
            # (re-derived at the epoch start and before the epoch-end validation).
            assert torch.equal(zero["ids"][:, :-1], zero["raw"]), (epoch, when)
            assert len(torch.unique(zero["ids"], dim=0)) == len(zero["ids"])
    # Epoch 0 trains the tokenizer jointly; epoch 1 (frozen) leaves it exactly as it was.
    assert not same(snap(0, 0, "start")["tokenizer"], snap(0, 0, "end")["tokenizer"])
    assert same(snap(0, 1, "start")["tokenizer"], snap(0, 1, "end")["tokenizer"])
    assert not same(snap(0, 1, "start")["t5"], snap(0, 1, "end")["t5"])
    assert same(snap(0, 0, "end")["tokenizer"], snap(0, 1, "start")["tokenizer"])
