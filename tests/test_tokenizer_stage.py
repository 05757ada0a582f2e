"""Tokenizer stage end to end: `genrec fit`/`tokenize`, artifacts, auto-build, callbacks, bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import yaml
from conftest import HashEncoder
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from genrec_lightning.callbacks import TemperatureAnnealing, anneal
from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.config_files import load_config
from genrec_lightning.data.datamodules import ItemEmbeddingDataModule, MovieLensDataModule
from genrec_lightning.errors import ConfigError, RunError
from genrec_lightning.modules.tokenizer import TokenizerModule
from genrec_lightning.pipeline import attach_upstream, build_semantic_ids, semantic_ids_dir
from genrec_lightning.semantic_ids import ArtifactMismatchError, SemanticIds, collision_rate
from genrec_lightning.tokenizers import RQKMeans

ROOT = Path(__file__).resolve().parents[1]
QUANTIZERS = "genrec_lightning.tokenizers.quantizers"


def tiny_config(tmp_path: Path, source: str = "configs/rqvae.yaml", **quantizer: Any) -> dict[str, Any]:
    """A shipped tokenizer YAML shrunk to seconds: 8-d hash embeddings, small MLP and codebooks."""
    cfg = load_config(ROOT / source)
    data = cfg["data"]["init_args"]["data"]["init_args"]
    data["cache_dir"] = str(tmp_path / "cache")
    data["encoder"] = {"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}}
    tok = cfg["model"]["init_args"]["tokenizer"]["init_args"]
    if "quantizer" in tok:
        tok["hidden_dims"], tok["latent_dim"] = [16], 8
        tok["quantizer"]["init_args"].update({"num_levels": 2, "codebook_size": 16, **quantizer})
    else:
        tok.update({"num_levels": 2, "codebook_size": 16})
    cfg["data"]["init_args"]["batch_size"] = 256
    trainer = cfg["trainer"]
    trainer.update({"max_epochs": 3, "check_val_every_n_epoch": 1, "log_every_n_steps": 1})
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in trainer.get("callbacks", []):
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
        if callback["class_path"].endswith("CollisionMonitor"):
            callback["init_args"] = {"every_n_epochs": 1, "every_n_steps": 2}
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any], name: str = "tok.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def data_of(cfg: dict[str, Any]) -> MovieLensDataModule:
    init = cfg["data"]["init_args"]["data"]["init_args"]
    return MovieLensDataModule(cache_dir=init["cache_dir"], encoder=HashEncoder(dim=8))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_fit_writes_the_artifact_a_recommender_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`genrec fit` on a tokenizer YAML writes the cache entry that auto-build then finds as is."""
    cfg = tiny_config(tmp_path)
    path = write_config(tmp_path, cfg)
    cli = GenRecCLI(args=["fit", "--config", str(path)])
    data = cli.datamodule.data
    written = cli.model.artifact_dir
    assert written is not None and written.parent == data.artifact_dir / "semantic_ids"
    ids = SemanticIds.load(written, expect=data.semantic_ids_expectation())
    assert ids.is_unique and ids.num_items == data.num_items and ids.num_levels == 3  # + suffix level
    # Checkpoint selection: the artifact comes from the best `val/collision_rate` checkpoint.
    assert ids.meta["checkpoint"] == cli.trainer.checkpoint_callback.best_model_path

    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("auto-build retrained a cached config"))
    again = build_semantic_ids(path, data_of(cfg))
    assert again.equal(ids)

    tags = scalars(tmp_path / "runs" / "rqvae" / "version_0")
    for tag in (
        "val/collision_rate",
        "val/recon_loss",
        "val/entropy_l0",
        "val/usage_l1",
        "ids/collision_rate",
    ):
        assert tag in tags, f"{tag} missing from the TensorBoard events"
    assert len(tags["val/collision_rate"]) == 3  # one per epoch


def test_soft_run_logs_annealed_temperature_and_collision_curves(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "configs/unigrec_pretrain.yaml")
    assert cfg["model"]["init_args"]["lr_decay"] == "linear"  # the shipped stage-1 recipe
    cfg["model"]["init_args"]["lr_warmup_steps"] = 4
    cli = GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    steps = cli.trainer.global_step
    # learning rate: 4 warm-up steps, then linear to 0 at the end of the run
    (schedule,) = cli.trainer.lr_scheduler_configs
    assert schedule.interval == "step" and steps > 8
    for step in range(steps + 1):
        expected = (step + 1) / 4 if step < 4 else 1 - (step - 4) / (steps - 4)
        assert schedule.scheduler.lr_lambdas[0](step) == pytest.approx(expected)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    tags = scalars(tmp_path / "runs" / "unigrec_pretrain" / "version_0")
    temperature = dict(tags["train/temperature"])
    assert temperature[0] == pytest.approx(0.01)
    for step, value in temperature.items():  # UniGRec eq. 16, from the step counter
        assert value == pytest.approx(0.01 - step / steps * (0.01 - 0.001), rel=1e-5)
    assert cli.model.temperature == pytest.approx(0.01 - (steps - 1) / steps * 0.009, rel=1e-5)
    curve = {s for s, _ in tags["ids/collision_rate"]}
    assert set(range(2, steps + 1, 2)) <= curve  # every 2 steps (plus once per epoch)
    assert "ids/entropy_l1" in tags and "val/collision_rate" in tags


def test_warmup_decay_shapes() -> None:
    from genrec_lightning.optim import warmup_cosine

    for step in range(25):
        warm = (step + 1) / 5 if step < 5 else None
        linear = warm or 0.1 + 0.9 * (1 - min(1.0, (step - 5) / 15))
        cosine = warm or 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 5) / 15)))
        assert warmup_cosine(step, 5, 20, 0.1, "linear") == pytest.approx(linear)
        assert warmup_cosine(step, 5, 20, 0.1) == pytest.approx(cosine)
        assert warmup_cosine(step, 5, 20, 0.1, "constant") == pytest.approx(warm or 1.0)
    with pytest.raises(ValueError, match="unknown decay"):
        warmup_cosine(7, 5, 20, 0.1, "step")  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential"])
def test_anneal_shapes(schedule: str) -> None:
    start, end = 0.05, 0.001
    assert anneal(0.0, start, end, schedule) == pytest.approx(start)
    assert anneal(1.0, start, end, schedule) == pytest.approx(end)
    assert anneal(7.0, start, end, schedule) == pytest.approx(end)  # held after the end
    values = [anneal(p / 10, start, end, schedule) for p in range(11)]
    assert values == sorted(values, reverse=True)
    reference = {
        "linear": start - 0.3 * (start - end),
        "cosine": end + 0.5 * (start - end) * (1 + math.cos(math.pi * 0.3)),
        "exponential": start * (end / start) ** 0.3,
    }[schedule]
    assert anneal(0.3, start, end, schedule) == pytest.approx(reference)


class _Position:
    def __init__(self, step: int, epoch: int = 0) -> None:
        self.global_step, self.current_epoch = step, epoch
        self.estimated_stepping_batches, self.max_epochs = 100, 10


def test_temperature_is_a_function_of_the_trainer_position() -> None:
    """Resuming restores global_step, so the temperature continues exactly (no callback state)."""
    by_step = TemperatureAnnealing(tau_max=0.01, tau_min=0.001)
    assert by_step.temperature(_Position(40)) == pytest.approx(0.01 - 0.4 * 0.009)
    assert TemperatureAnnealing(total=80).temperature(_Position(40)) == pytest.approx(0.01 - 0.5 * 0.009)
    by_epoch = TemperatureAnnealing(interval="epoch")
    assert by_epoch.temperature(_Position(999, epoch=5)) == pytest.approx(0.01 - 0.5 * 0.009)
    assert by_step.state_dict() == {}
    with pytest.raises(ValueError, match="tau_min <= tau_max"):
        TemperatureAnnealing(tau_max=0.001, tau_min=0.01)


def test_annealing_a_hard_quantizer_is_refused_before_training(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["trainer"]["callbacks"].append({"class_path": "genrec_lightning.callbacks.TemperatureAnnealing"})
    with pytest.raises(MisconfigurationException, match="soft quantiser"):
        GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    assert not (tmp_path / "checkpoints").exists()


def test_auto_build_once_and_rng_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recommender datamodule naming a tokenizer config builds its IDs once; the caller's RNG
    continues identically whether the artifact was built or found in the cache."""
    cfg = tiny_config(tmp_path, "configs/tokenizers/rqkmeans.yaml")
    path = write_config(tmp_path, cfg)
    init = cfg["data"]["init_args"]["data"]["init_args"]

    def recommender_data() -> MovieLensDataModule:
        return attach_upstream(
            MovieLensDataModule(
                cache_dir=init["cache_dir"], encoder=HashEncoder(dim=8), semantic_ids_from=str(path)
            )
        )

    torch.manual_seed(7)
    built = recommender_data().semantic_ids
    after_build = torch.rand(3)
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("cached IDs were rebuilt"))
    torch.manual_seed(7)
    cached = recommender_data().semantic_ids
    assert torch.equal(torch.rand(3), after_build)
    assert cached.equal(built)
    # RQ-KMeans is deterministic: the IDs are exactly a direct fit of the embeddings.
    data = recommender_data()
    direct = RQKMeans(8, num_levels=2, codebook_size=16, niter=25, seed=0).fit(data.item_embeddings())
    assert torch.equal(built.raw_codes, direct.encode(data.item_embeddings()))


def test_tokenize_command_prints_statistics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(tmp_path, "configs/tokenizers/pqkmeans.yaml")
    cfg["model"]["init_args"]["tokenizer"]["init_args"]["num_levels"] = 4
    path = write_config(tmp_path, cfg)
    main(["tokenize", "--config", str(path), "--json", "true"])
    stats = yaml.safe_load(capsys.readouterr().out)
    assert stats["num_levels"] == 5 and stats["unique_ratio"] == 1.0
    assert len(stats["filter_ratio"]) == len(stats["purity_gain"]) == 5
    assert Path(stats["artifact_dir"]) == semantic_ids_dir(path, data_of(cfg))
    main(["tokenize", "--config", str(path)])
    table = capsys.readouterr().out
    assert "collision rate before dedup" in table and "filtered" in table


def test_artifact_from_another_dataset_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "configs/tokenizers/rqkmeans.yaml")
    directory = semantic_ids_dir(write_config(tmp_path, cfg), data_of(cfg))
    init = cfg["data"]["init_args"]["data"]["init_args"]
    other = MovieLensDataModule(
        cache_dir=init["cache_dir"],
        encoder=HashEncoder(dim=8),
        min_item_interactions=10,
        semantic_ids_from=str(directory),
    )
    with pytest.raises(ArtifactMismatchError, match="data_hash|num_items"):
        attach_upstream(other)
    with pytest.raises(FileNotFoundError, match="neither a semantic-ID artifact directory nor"):
        attach_upstream(
            MovieLensDataModule(cache_dir=init["cache_dir"], semantic_ids_from=str(tmp_path / "nope"))
        )


def test_nan_embeddings_stop_the_tokenizer_before_training(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["data"]["init_args"]["data"]["init_args"]["encoder"]["init_args"]["nan_rows"] = [5]
    with pytest.raises(ValueError, match="NaN|non-finite"):
        GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    assert not (tmp_path / "checkpoints").exists()


def test_reassign_last_without_capacity_is_refused_before_training(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["model"]["init_args"]["dedup"] = "reassign_last"
    cfg["model"]["init_args"]["tokenizer"]["init_args"]["quantizer"]["init_args"]["codebook_size"] = 8
    with pytest.raises(ValueError, match="use dedup: suffix or larger codebooks"):
        GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])


def test_checkpoint_of_another_embedding_size_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["trainer"]["max_epochs"] = 1
    cli = GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    checkpoint = cli.trainer.checkpoint_callback.best_model_path
    wider = copy.deepcopy(cfg)
    wider["data"]["init_args"]["data"]["init_args"]["encoder"]["init_args"]["dim"] = 12
    with pytest.raises(ValueError, match="trained on 8-d embeddings, the data gives 12-d"):
        main(
            [
                "predict",
                "--config",
                str(write_config(tmp_path, wider, "wide.yaml")),
                "--ckpt_path",
                checkpoint,
            ]
        )


def test_predict_writes_ids_of_the_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    path = write_config(tmp_path, cfg)
    fitted = GenRecCLI(args=["fit", "--config", str(path)])
    best = Path(fitted.trainer.checkpoint_callback.best_model_path)
    out = tmp_path / "predicted"
    GenRecCLI(
        args=[
            "predict",
            "--config",
            str(path),
            "--ckpt_path",
            str(best),
            "--model.init_args.output_dir",
            str(out),
        ]
    )
    assert SemanticIds.load(out).equal(SemanticIds.load(fitted.model.artifact_dir))


def test_validation_metrics_match_the_written_table(tmp_path: Path) -> None:
    """The per-epoch collision rate (item-indexed buffers) equals the final table's own statistic."""
    cfg = tiny_config(tmp_path)
    cfg["model"]["init_args"]["use_best_checkpoint"] = False
    cfg["data"]["init_args"]["batch_size"] = 100  # several validation batches
    cli = GenRecCLI(args=["fit", "--config", str(write_config(tmp_path, cfg))])
    ids = SemanticIds.load(cli.model.artifact_dir)
    logged = cli.trainer.callback_metrics["val/collision_rate"].item()
    assert logged == pytest.approx(collision_rate(ids.raw_codes))
    assert logged == pytest.approx(ids.meta["statistics"]["collision_rate"])


def test_tokenizer_module_refuses_a_non_embedding_datamodule(tmp_path: Path) -> None:
    module = TokenizerModule(embedding_dim=8)
    data = MovieLensDataModule(cache_dir=str(tmp_path / "cache"), encoder=HashEncoder(dim=8))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match="ItemEmbeddingDataModule"):
        trainer.fit(module, datamodule=data)
    assert isinstance(ItemEmbeddingDataModule(data).embeddings, torch.Tensor)


def test_data_declares_ids_and_only_the_pipeline_builds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a datamodule never trains: its IDs exist only once `attach_upstream` built them."""
    cfg = tiny_config(tmp_path, "configs/tokenizers/rqkmeans.yaml")
    path = write_config(tmp_path, cfg)
    init = cfg["data"]["init_args"]["data"]["init_args"]

    def declared(**kwargs: Any) -> MovieLensDataModule:
        return MovieLensDataModule(cache_dir=init["cache_dir"], encoder=HashEncoder(dim=8), **kwargs)

    dm = declared(semantic_ids_from=str(path))
    with monkeypatch.context() as patch:
        patch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("a datamodule property trained"))
        for name in ("codebook_sizes", "semantic_ids", "tokenizer_config", "semantic_ids_path"):
            with pytest.raises(RunError, match=r"attach_upstream\(datamodule\)"):
                getattr(dm, name)
        dm.prepare_data()  # Lightning's hook builds the data artifact only
    assert not (dm.artifact_dir / "semantic_ids").exists()
    assert attach_upstream(dm) is dm
    assert dm.codebook_sizes == dm.semantic_ids.codebook_sizes and dm.codebook_sizes[:2] == [16, 16]
    assert (dm.semantic_ids_path / "codes.safetensors").is_file()
    assert dm.tokenizer_config["class_path"].endswith("TokenizerModule")
    assert dm.teacher_embeddings is None and dm.teacher_dim is None
    # Without a declaration the sizes are plainly absent (the CLI's links then skip them).
    plain = attach_upstream(declared())
    assert plain.codebook_sizes is None and plain.semantic_ids is None and plain.tokenizer_config is None


def test_configs_of_older_runs_still_name_their_ids(tmp_path: Path) -> None:
    """`tokenizer`/`teacher` were renamed; a saved config.yaml that uses them still loads."""
    cache = str(tmp_path / "cache")
    with pytest.warns(FutureWarning, match="`tokenizer` is now called `semantic_ids_from`"):
        old = MovieLensDataModule(cache_dir=cache, tokenizer="ids.yaml", teacher=None)
    assert old.semantic_ids_from == "ids.yaml" and old.teacher_from is None
    with pytest.warns(FutureWarning, match="`teacher` is now called `teacher_from`"):
        assert MovieLensDataModule(cache_dir=cache, teacher="t.yaml").teacher_from == "t.yaml"
    with pytest.raises(ConfigError, match="both tokenizer and semantic_ids_from are set"):
        MovieLensDataModule(cache_dir=cache, tokenizer="a.yaml", semantic_ids_from="b.yaml")


def test_collision_monitor_reads_raw_ids_of_either_module() -> None:
    """One name for the tokenizer's own IDs (`raw_item_codes`, `raw_codebook_sizes`) in both the
    tokenizer stage and UniGRec; a module without them is refused by name."""
    from genrec_lightning.callbacks import CollisionMonitor
    from genrec_lightning.modules.unigrec import UniGRecModule

    for module in (TokenizerModule, UniGRecModule):
        assert callable(module.raw_item_codes) and isinstance(module.raw_codebook_sizes, property)
    with pytest.raises(MisconfigurationException, match=r"raw_item_codes\(\) and raw_codebook_sizes"):
        CollisionMonitor().setup(L.Trainer(logger=False), torch.nn.Module(), "fit")  # type: ignore[arg-type]
