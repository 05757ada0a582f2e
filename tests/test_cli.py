"""The `genrec` command line: help texts, every shipped YAML, data subcommands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    assert CONFIGS, "no YAML found under configs/"


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


#: The token-weighting paper's IDs (§5.1.3, footnote 5), shared by every row of its tables but the PQ ones.
PAPER_IDS = "configs/tokenizers/rqvae_4x256.yaml"


@pytest.mark.parametrize("name", TOKEN_LOSS_CONFIGS)
def test_token_loss_configs_change_only_the_loss(name: str) -> None:
    """Every row of the paper's tables is its TIGER row (configs/baselines/tiger.yaml) with another
    loss, on the paper's IDs (Table 5: PQ IDs)."""
    base = load_config(ROOT / "configs/baselines/tiger.yaml")
    cfg = load_config(ROOT / "configs" / name)
    text = (ROOT / "configs" / name).read_text()
    assert text.startswith("# ") and f"genrec fit --config configs/{name}" in text, "header: what + command"
    assert cfg["model"]["init_args"].pop("loss") != base["model"]["init_args"].pop("loss") or "pq_" in name
    assert cfg["trainer"]["callbacks"][: len(base["trainer"]["callbacks"])] == base["trainer"]["callbacks"]
    for c in (cfg, base):
        c["trainer"]["logger"]["init_args"].pop("name")
        c["trainer"].pop("callbacks")
        tokenizer = c["data"]["init_args"].pop("semantic_ids_from")
        assert tokenizer == ("configs/tokenizers/pqkmeans.yaml" if c is cfg and "pq_" in name else PAPER_IDS)
    assert cfg == base


def test_token_weighting_rows_share_the_papers_ids() -> None:
    """The paper's layout: one RQ-VAE config with 4 levels x 256 and random last-token reassignment,
    named by the TIGER row and every token-weighting row; TIGER's own configs keep 3 x 256 + suffix,
    and the two TIGER rows differ only in their IDs."""
    rows = ["baselines/tiger.yaml", *(n for n in TOKEN_LOSS_CONFIGS if "pq_" not in n)]
    named = {load_config(ROOT / "configs" / n)["data"]["init_args"]["semantic_ids_from"] for n in rows}
    assert named == {PAPER_IDS}
    ids = load_config(ROOT / PAPER_IDS)["model"]["init_args"]
    quantizer = ids["tokenizer"]["init_args"]["quantizer"]
    assert quantizer["class_path"].endswith("ResidualQuantizer")
    assert quantizer["init_args"]["num_levels"] == 4 and quantizer["init_args"]["codebook_size"] == 256
    assert ids["dedup"] == "reassign_last"
    tiger_ids = load_config(ROOT / "configs/rqvae.yaml")["model"]["init_args"]
    assert (
        tiger_ids["dedup"] == "suffix"
        and tiger_ids["tokenizer"]["init_args"]["quantizer"]["init_args"]["num_levels"] == 3
    )
    tiger, paper = (load_config(ROOT / "configs" / n) for n in ("tiger.yaml", "baselines/tiger.yaml"))
    for c in (tiger, paper):
        c["data"]["init_args"].pop("semantic_ids_from")
        c["trainer"]["logger"]["init_args"].pop("name")
    assert tiger == paper
