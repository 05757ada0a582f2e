"""The `genrec` command line: help texts, every shipped YAML, data subcommands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genrec_lightning.cli import GenRecCLI, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "no YAML found under configs/"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_yaml_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    """Each shipped YAML is accepted by the real parser (types, class paths, option names)."""
    # A preset is a partial config layered over an experiment, as the README runs it; a delta (no
    # model or data class of its own) is parsed over the base its usage line stacks it on.
    base = ["--config", str(ROOT / "configs/tiger.yaml")] if config.parent.name == "presets" else []
    parsed = yaml.safe_load(config.read_text())
    if not base and not any("class_path" in (parsed.get(key) or {}) for key in ("model", "data")):
        name = str(config.relative_to(ROOT))
        stacked = re.search(rf"--config (\S+) --config {re.escape(name)}", config.read_text())
        assert stacked, f"{name} is a delta config: its header must show `--config <base> --config {name}`"
        base = ["--config", str(ROOT / stacked.group(1))]
    with pytest.raises(SystemExit) as done:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "trainer:" in printed


def test_fit_help_lists_datamodule_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", "MovieLensDataModule"])
    out = capsys.readouterr().out
    for option, doc in (
        ("--data.min_user_interactions", "k-core threshold for users"),
        ("--data.max_history", "most recent items kept as history"),
        ("--data.encoder", "text encoder for item embeddings"),
        ("--data.variant", "`100k` or `1m`"),
    ):
        assert option in out and doc in out


def test_data_stats_prints_filtered_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(
        [
            "data-stats",
            "--config",
            str(ROOT / "configs/data/ml100k.yaml"),
            "--data.init_args.cache_dir",
            str(tmp_path),
            "--json",
            "true",
        ]
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["raw"] == {"interactions": 100_000, "users": 943, "items": 1682}
    assert stats["users"] == 943 and stats["items"] < 1682
    assert Path(stats["artifact_dir"]).is_relative_to(tmp_path)
    main(["data-stats", "--data", "MovieLensDataModule", "--data.cache_dir", str(tmp_path)])
    table = capsys.readouterr().out
    assert f"{stats['interactions']:,}" in table and "history mean length" in table


def test_data_stats_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An expected user error is one line on stderr and exit 1, no traceback."""
    with pytest.raises(SystemExit) as done:
        main(["data-stats", "--data", "YelpDataModule", "--data.root", str(tmp_path)])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec: error:") and "yelp_academic_dataset_review.json" in err
    assert "Traceback" not in err


def test_module_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "genrec_lightning", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("genrec_lightning ")


def test_fit_links_sizes_and_logs_to_tensorboard(tmp_path: Path) -> None:
    """`genrec fit` wires data sizes into the model and writes config.yaml + event files in runs/."""
    cli = GenRecCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "configs/debug.yaml"),
            "--model",
            "conftest.ProbeModel",
            "--data",
            "MovieLensDataModule",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--trainer.max_steps",
            "3",
        ]
    )
    assert cli.model.hparams.num_items == cli.datamodule.num_items > 1000
    assert cli.model.hparams.pad_item == cli.datamodule.num_items
    assert cli.trainer.global_step == 3
    run = tmp_path / "runs" / "genrec" / "version_0"
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))


# Token-weighting ablations (Tables 4-5); the UniGRec ablations are tested in test_unigrec.py.
ABLATIONS = sorted(
    f"ablations/{p.name}"
    for p in (ROOT / "configs/ablations").glob("*.yaml")
    if not p.name.startswith("unigrec")
)
TOKEN_LOSS_CONFIGS = [
    "tiger_curriculum.yaml",
    *ABLATIONS,
    *(f"baselines/{n}.yaml" for n in ("pos", "cft", "igd", "rank")),
]


@pytest.mark.parametrize("name", TOKEN_LOSS_CONFIGS)
def test_token_loss_configs_change_only_the_loss(name: str) -> None:
    """Every row of the paper's tables is configs/tiger.yaml with another loss (and, for Table 5, PQ IDs)."""
    base = yaml.safe_load((ROOT / "configs/tiger.yaml").read_text())
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    text = (ROOT / "configs" / name).read_text()
    assert text.startswith("# ") and f"genrec fit --config configs/{name}" in text, "header: what + command"
    assert cfg["model"]["init_args"].pop("loss") != base["model"]["init_args"].pop("loss") or "pq_" in name
    assert cfg["trainer"]["callbacks"][: len(base["trainer"]["callbacks"])] == base["trainer"]["callbacks"]
    for c in (cfg, base):
        c["trainer"]["logger"]["init_args"].pop("name")
        c["trainer"].pop("callbacks")
        tokenizer = c["data"]["init_args"].pop("tokenizer")
        assert tokenizer == (
            "configs/tokenizers/pqkmeans.yaml" if c is cfg and "pq_" in name else "configs/rqvae.yaml"
        )
    assert cfg == base
