"""The run layer: exact resume, `--ckpt_path last`, SIGTERM, refusals before any stage, CLI surface."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser
from test_recommender import ROOT, data, tiny_experiment  # noqa: F401  (module fixture `data`)

from genrec_lightning.cli import COMMANDS, GenRecCLI, main
from genrec_lightning.config_files import expand_bases

EXPERIMENTS = sorted(
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    if p.parent.name not in ("data", "presets") and p.name != "debug.yaml"
)


class SigtermAt(L.Callback):
    """Sends the process SIGTERM after optimiser step `step`, as a scheduler or `timeout` would."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class StopAfterEpoch(L.Callback):
    """Ends fit after epoch `epoch` (0-based) of a longer planned run, as a killed job between epochs."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class LastOnDisk(L.Callback):
    """Records the step held by `last.ckpt` as each epoch after the first starts: what a run
    killed without warning (SIGKILL) at that moment would resume from."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch > 0:
            last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
            self.steps.append(torch.load(last, weights_only=True)["global_step"] if last.is_file() else -1)


def genrec(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "genrec_lightning", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def experiment(tmp_path: Path, data: dict[str, Any], **trainer: Any) -> Path:  # noqa: F811
    """The tiny TIGER run with its checkpoints in the run directory (the shipped configs' layout)."""
    config = tiny_experiment(tmp_path, data)
    cfg = yaml.safe_load(config.read_text())
    for callback in cfg["trainer"]["callbacks"]:
        callback.get("init_args", {}).pop("dirpath", None)
    cfg["trainer"].update(enable_progress_bar=False, **trainer)
    config.write_text(yaml.safe_dump(cfg))
    return config


LAST = "last.ckpt"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# ----------------------------------------------------------------------------- item 1, 2: resume
def test_last_ckpt_holds_the_last_step(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3 epochs of 3 steps, validation every 2nd epoch: the last step (9) follows no validation."""
    config = experiment(tmp_path, data, max_steps=-1, max_epochs=3, limit_train_batches=3,
                        check_val_every_n_epoch=2)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false"])
    last = tmp_path / "runs" / "tiger" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 9
    assert any(r.name.startswith("lightning.pytorch") for r in caplog.records)  # the probe hears Lightning
    # writing it is silent: Lightning logs "`weights_only` was not set" at each save that leaves it open
    assert "weights_only" not in caplog.text


def test_resume_from_last_continues_the_same_run_exactly(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """2 epochs straight == stopped after epoch 1, then `--ckpt_path last`: same weights (dropout is
    on, so the RNG state travels too; the learning-rate schedule plans the same 8 steps), same
    shuffled order, logged into the same version directory."""
    common = dict(max_steps=-1, max_epochs=2, limit_train_batches=4, check_val_every_n_epoch=1)
    straight = experiment(tmp_path / "straight", data, **common)
    GenRecCLI(args=["fit", "--config", str(straight), "--test_after_fit", "false"])
    split = experiment(tmp_path / "split", data, **common)
    GenRecCLI(args=["fit", "--config", str(split), "--test_after_fit", "false",
                    "--trainer.callbacks+=test_run_layer.StopAfterEpoch"])  # fmt: skip
    runs = tmp_path / "split" / "runs" / "tiger"
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    GenRecCLI(args=["fit", "--config", str(split), "--test_after_fit", "false", "--ckpt_path", "last"])
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # continued, not a new version_1
    assert torch.load(last, weights_only=True)["global_step"] == 8
    assert_same_weights(tmp_path / "straight" / "runs" / "tiger" / "version_0" / "checkpoints" / LAST, last)


def test_a_named_run_resumes_in_place_from_its_checkpoint_path(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """The experiment runner's resume: a run named by --version (`seed1`) and restarted with the same
    command plus the path of its last.ckpt continues in that directory (its config.yaml is the
    stored one, not a reason to refuse), to the planned last step."""
    config = experiment(tmp_path, data, max_steps=-1, max_epochs=2, limit_train_batches=4,
                        check_val_every_n_epoch=1)  # fmt: skip
    named = ["fit", "--config", str(config), "--test_after_fit", "false",
             "--trainer.logger.init_args.version", "seed1"]  # fmt: skip
    GenRecCLI(args=[*named, "--trainer.callbacks+=test_run_layer.StopAfterEpoch"])
    runs = tmp_path / "runs" / "tiger"
    last = runs / "seed1" / "checkpoints" / LAST
    assert (runs / "seed1" / "config.yaml").is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GenRecCLI(args=[*named, "--ckpt_path", str(last)])
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]  # expected, not noise
    assert [p.name for p in runs.iterdir()] == ["seed1"]
    assert torch.load(last, weights_only=True)["global_step"] == 8


def test_a_run_of_a_delta_config_is_tested_again_from_its_saved_config(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
) -> None:
    """`genrec test --config <run>/config.yaml`, as the README says: for a run of a config that
    builds on a base, the saved file is the merged config and names no base (it used to keep
    `base: tiger.yaml`, which does not exist in the run directory, so the command failed)."""
    config = experiment(tmp_path, data, max_steps=2)
    delta = tmp_path / "variant.yaml"
    delta.write_text(f"base: {config.name}\nseed_everything: 3\n")
    GenRecCLI(args=["fit", "--config", str(delta), "--test_after_fit", "false"])
    run = tmp_path / "runs" / "tiger" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["base"] is None and saved["seed_everything"] == 3
    assert saved["trainer"]["max_steps"] == 2  # the base's settings are in the file itself
    last = run / "checkpoints" / LAST
    tested = GenRecCLI(args=["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(last),
                             "--trainer.logger.init_args.version", "0"])  # fmt: skip
    assert "test/ndcg@10" in tested.trainer.callback_metrics
    assert (run / "test_metrics.json").is_file()


def test_a_checkpoint_of_another_named_run_does_not_overwrite_this_runs_config(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
) -> None:
    """Starting run `b` from run `a`'s checkpoint is a new run, not a continuation: `b` already
    holding a config.yaml is still refused rather than silently replaced."""
    config = experiment(tmp_path, data, max_steps=2, max_epochs=1, limit_train_batches=2)
    base = ["fit", "--config", str(config), "--test_after_fit", "false"]
    GenRecCLI(args=[*base, "--trainer.logger.init_args.version", "a"])
    GenRecCLI(args=[*base, "--trainer.logger.init_args.version", "b"])
    a_last = tmp_path / "runs" / "tiger" / "a" / "checkpoints" / LAST
    with pytest.raises(RuntimeError, match="config.yaml to NOT exist"):
        GenRecCLI(args=[*base, "--trainer.logger.init_args.version", "b", "--ckpt_path", str(a_last)])


@pytest.mark.parametrize("top_k", [0, 1])
def test_last_ckpt_follows_every_validation(tmp_path: Path, data: dict[str, Any], top_k: int) -> None:  # noqa: F811
    """Lightning refreshes last.ckpt only with a new top-k checkpoint, so a SIGKILL after epochs
    that did not improve would resume several epochs back; genrec's last.ckpt holds the step of
    the latest validation (top_k=0: Lightning never saves one), without a `last-v1.ckpt` beside it."""
    config = experiment(tmp_path, data, max_steps=-1, max_epochs=3, limit_train_batches=3,
                        check_val_every_n_epoch=1)  # fmt: skip
    cfg = yaml.safe_load(config.read_text())
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["save_top_k"] = top_k
    config.write_text(yaml.safe_dump(cfg))
    cli = GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false",
                          "--trainer.callbacks+=test_run_layer.LastOnDisk"])  # fmt: skip
    probe = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LastOnDisk))
    assert probe.steps == [3, 6]
    checkpoints = tmp_path / "runs" / "tiger" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / LAST, weights_only=True)["global_step"] == 9
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("last")) == [LAST]
    assert len(list(checkpoints.glob("epoch=*.ckpt"))) == top_k


def test_ckpt_path_last_without_a_run_is_a_one_line_error(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
    capsys: pytest.CaptureFixture,
) -> None:
    config = experiment(tmp_path, data)
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec: error: --ckpt_path last: no checkpoint at") and "\n" not in err
    assert not (tmp_path / "runs" / "tiger").exists() or not list((tmp_path / "runs" / "tiger").iterdir())


# ----------------------------------------------------------------------------- item 3: SIGTERM
def test_sigterm_exits_nonzero_and_resumes_mid_epoch_exactly(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """SIGTERM after step 3 of a 6-step epoch: exit 143, last.ckpt at step 3, and resuming it ends
    with the weights of the run that was never stopped (the loader skips the 3 batches it trained on)."""
    common = dict(max_steps=-1, max_epochs=2, limit_train_batches=6, check_val_every_n_epoch=1)
    straight = experiment(tmp_path / "straight", data, **common)
    GenRecCLI(args=["fit", "--config", str(straight), "--test_after_fit", "false"])
    stopped = experiment(tmp_path / "stopped", data, **common)
    done = genrec("fit", "--config", str(stopped), "--trainer.callbacks+=test_run_layer.SigtermAt")
    assert done.returncode == 143, done.stderr[-3000:]
    assert "stopped by SIGTERM" in done.stderr and "--ckpt_path last" in done.stderr
    last = tmp_path / "stopped" / "runs" / "tiger" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert not (tmp_path / "stopped" / "runs" / "tiger" / "version_0" / "test_metrics.json").exists()
    GenRecCLI(args=["fit", "--config", str(stopped), "--test_after_fit", "false", "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert_same_weights(
        tmp_path / "straight" / "runs" / "tiger" / "version_0" / "checkpoints" / "last.ckpt", last
    )


# ----------------------------------------------------------------------------- item 4, 7, 8: refusals
def test_test_without_a_checkpoint_is_refused_for_trained_models(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
    capsys: pytest.CaptureFixture,
) -> None:
    config = experiment(tmp_path, data)
    with pytest.raises(SystemExit) as done:
        main(["test", "--config", str(config)])
    assert done.value.code == 1
    assert "genrec test needs --ckpt_path" in capsys.readouterr().err
    assert not list(tmp_path.rglob("test_metrics.json"))
    # Asked for explicitly, the untrained floor is scored.
    GenRecCLI(args=["test", "--config", str(config), "--allow_untrained", "true"])
    assert list(tmp_path.rglob("test_metrics.json"))


def test_most_popular_needs_no_checkpoint(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    GenRecCLI(args=["test", "--config", str(ROOT / "configs/baselines/most_popular.yaml"),
                    "--data.init_args.cache_dir", str(data["cache"]), "--data.init_args.encoder",
                    "conftest.HashEncoder", "--trainer.logger.init_args.save_dir", str(tmp_path),
                    "--trainer.limit_test_batches", "1"])  # fmt: skip
    assert list(tmp_path.rglob("test_metrics.json"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> dict[str, Path]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("trained")
    config = experiment(tmp, data, max_steps=2)
    GenRecCLI(args=["fit", "--config", str(config), "--test_after_fit", "false"])
    return {"config": config, "last": tmp / "runs" / "tiger" / "version_0" / "checkpoints" / "last.ckpt"}


def unbuilt_tokenizer(tmp_path: Path, config: Path) -> tuple[Path, Path]:
    """`config` with its IDs named by a tokenizer YAML over an empty cache: building them would train."""
    from test_tokenizer_stage import tiny_config, write_config

    tokenizer = write_config(tmp_path, tiny_config(tmp_path, "configs/rqvae.yaml"))
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["init_args"]["semantic_ids_from"] = str(tokenizer)
    out = tmp_path / "unbuilt.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out, tmp_path / "runs"


def test_a_checkpoint_of_other_data_fails_before_any_stage(
    tmp_path: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    config, tokenizer_runs = unbuilt_tokenizer(tmp_path, trained["config"])
    with pytest.raises(SystemExit) as done:
        main(["test", "--config", str(config), "--ckpt_path", str(trained["last"]),
              "--data.init_args.min_user_interactions", "6"])  # fmt: skip
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "was trained on other data" in err and "data_hash" in err and "config.yaml" in err
    assert not tokenizer_runs.exists()  # no tokenizer was trained


def test_a_checkpoint_of_another_model_is_summarised(
    trained: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["test", "--config", str(ROOT / "configs/sasrec.yaml"), "--ckpt_path", str(trained["last"])])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "holds a GenerativeRecommender" in err and "builds a SequentialRecommender" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model.init_args.beam_size", "0", "beam_size=0 is too small"),
        ("--model.init_args.optimization.lr", "-1", "lr must be positive"),
        ("--model.init_args.lr", "-1", "lr must be positive"),  # the former flat name, moved
        ("--data.init_args.batch_size", "-4", "batch_size must be >= 1"),
    ],
)
def test_bad_settings_fail_before_any_stage(
    tmp_path: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture,
    option: str,
    value: str,
    message: str,
) -> None:
    config, tokenizer_runs = unbuilt_tokenizer(tmp_path, trained["config"])
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), option, value])
    assert done.value.code in (1, 2)  # ours (1) or the parser's usage error (2)
    assert message in capsys.readouterr().err
    assert not tokenizer_runs.exists()


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_runs_dir_fails_first(
    tmp_path: Path, trained: dict[str, Path], capsys, where: str
) -> None:
    """A runs dir below a file, or on a mount where even root cannot create files (/proc)."""
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this OS")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    save_dir = blocker / "runs" if where == "under_a_file" else Path("/proc/genrec_runs")
    config, tokenizer_runs = unbuilt_tokenizer(tmp_path, trained["config"])
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(save_dir)])
    assert done.value.code == 1
    assert f"genrec: error: cannot write to {save_dir}" in capsys.readouterr().err
    assert not tokenizer_runs.exists()


def test_verbose_shows_the_traceback(trained: dict[str, Path]) -> None:
    done = genrec("test", "--config", str(trained["config"]), "--verbose")
    assert done.returncode != 0 and "Traceback" in done.stderr and "RunError" in done.stderr
    done = genrec("test", "--config", str(trained["config"]))
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_a_corrupted_artifact_found_while_linking_sizes_is_one_line(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
) -> None:
    """Errors raised inside jsonargparse's instantiation (here: reading `codebook_sizes` for the size
    link) reach the console as our one line, not as a union-validation dump of the whole config."""
    import shutil

    broken = tmp_path / "ids"
    shutil.copytree(data["ids"], broken)
    (broken / "meta.json").write_text("{truncated")
    config = experiment(tmp_path, data)
    done = genrec("fit", "--config", str(config), "--data.init_args.semantic_ids_from", str(broken))
    assert done.returncode == 1
    assert f"genrec: error: {broken / 'meta.json'} is not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr and "Union" not in done.stderr
    assert "not recommended to provide both args" not in done.stderr  # console runs pass no args


def test_a_bad_tokenizer_config_built_as_a_stage_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A codebook of one code in a tokenizer YAML: refused at construction inside the stage build,
    reported as our error (not jsonargparse's union dump), before any k-means runs."""
    from test_tokenizer_stage import tiny_config, write_config

    cfg = tiny_config(tmp_path, "configs/tokenizers/rqkmeans.yaml")
    cfg["model"]["init_args"]["tokenizer"]["init_args"]["codebook_size"] = 1
    with pytest.raises(SystemExit) as done:
        main(["tokenize", "--config", str(write_config(tmp_path, cfg))])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        "genrec: error: RQKMeans: codebook_size must be >= 2, got 1; set it to 2 or more (e.g. 256)"
    )
    assert "Union" not in err and not (tmp_path / "runs").exists()


def test_user_error_is_found_behind_a_wrapping_error() -> None:
    from genrec_lightning.errors import ConfigError, user_errors_unwrapped

    with pytest.raises(ConfigError, match="original"), user_errors_unwrapped():
        try:
            raise ConfigError("original")
        except ConfigError as err:
            raise ValueError("Does not validate against any of the Union subtypes") from err
    with pytest.raises(KeyError), user_errors_unwrapped():  # anything else passes unchanged
        raise KeyError("a bug")


# ----------------------------------------------------------------------------- item 10: CLI surface
def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    commands = ("fit", "validate", "test", "predict", "prepare", "data-stats", "tokenize", "report")
    commands += ("compare", "export", "recommend", "serve")
    for command in commands:
        assert f"  {command} " in out
    assert set(COMMANDS) == set(commands)
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2 and "tokenize" in capsys.readouterr().err


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_debug_yaml_layers_over_every_experiment(config: Path) -> None:
    """The layered trainer settings build a Trainer (no checkpointing/callback contradiction)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_lightning_class_args(L.Trainer, "trainer")
    for section in ("model", "data", "seed_everything", "base"):
        parser.add_argument(f"--{section}", type=Any, default=None)
    cfg = parser.parse_args(
        expand_bases(["--config", str(config), "--config", str(ROOT / "configs/debug.yaml")])
    )
    init = parser.instantiate_classes(cfg)
    trainer = L.Trainer(**{**init.trainer, "logger": False})
    assert trainer.max_steps == 5 and trainer.num_sanity_val_steps == 0


def test_relative_config_paths_resolve_from_another_directory(tmp_path: Path, capsys) -> None:
    """`configs/rqvae.yaml` inside an experiment config is found from any working directory; a path
    found nowhere stops the run before `./data/cache` or `./runs` are created."""
    from genrec_lightning.cli import resolve_input_paths

    work = tmp_path / "elsewhere"
    work.mkdir()
    cwd = Path.cwd()
    os.chdir(work)
    try:
        init_args = Namespace(semantic_ids_from="configs/rqvae.yaml", teacher_from=None)
        data = Namespace(class_path="x", init_args=init_args)
        resolve_input_paths(data, [ROOT / "configs" / "tiger.yaml"])
        assert data.init_args.semantic_ids_from == str(ROOT / "configs" / "rqvae.yaml")
        bad = yaml.safe_load((ROOT / "configs/tiger.yaml").read_text())
        bad["data"]["init_args"]["semantic_ids_from"] = "configs/missing.yaml"
        (work / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(work / "bad.yaml")])
        assert done.value.code == 1
        assert "semantic_ids_from: configs/missing.yaml does not exist" in capsys.readouterr().err
        assert sorted(p.name for p in work.iterdir()) == ["bad.yaml"]  # no data/ nor runs/
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- item 5: DDP teardown
@pytest.mark.slow
def test_ddp_fit_exits_cleanly_ten_times_in_a_row(tmp_path: Path, data: dict[str, Any]) -> None:  # noqa: F811
    """2-process gloo fit + test from an empty tokenizer cache, 10 times: every run exits 0 with no
    "terminate called" abort at teardown (the process group is destroyed before exit)."""
    from test_tokenizer_stage import tiny_config, write_config

    for i in range(10):
        run = tmp_path / f"run{i}"
        tok = tiny_config(run, "configs/rqvae.yaml")
        tok["trainer"]["max_epochs"] = 2
        config = tiny_experiment(run, data)
        cfg = yaml.safe_load(config.read_text())
        encoder = {"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}}
        cfg["data"]["init_args"].update(cache_dir=str(run / "cache"),
                                        semantic_ids_from=str(write_config(run, tok)),
                                        encoder=encoder, eval_batch_size=100)  # fmt: skip
        cfg["trainer"].update(max_steps=4, limit_train_batches=4, limit_test_batches=1.0)
        config.write_text(yaml.safe_dump(cfg))
        done = genrec("fit", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp",
                      "--trainer.accelerator", "cpu")  # fmt: skip
        assert done.returncode == 0 and "terminate called" not in done.stderr, (i, done.stderr[-3000:])
        assert (next((run / "runs" / "tiger").glob("version_*")) / "test_metrics.json").is_file()
