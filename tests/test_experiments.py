"""benchmarks/experiments.py: command lines, resumable runs, mean ± std tables, kept notes."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("experiments", ROOT / "benchmarks" / "experiments.py")
experiments = importlib.util.module_from_spec(_spec)
sys.modules["experiments"] = experiments
_spec.loader.exec_module(experiments)  # type: ignore[union-attr]


def fake_result(runs: Path, row: str, seed: int, ndcg10: float) -> None:
    directory = runs / experiments.Row(row, ("x.yaml",)).slug / f"seed{seed}"
    directory.mkdir(parents=True)
    metrics = {"test/recall@5": 2 * ndcg10, "test/ndcg@5": ndcg10 / 2, "test/recall@10": 3 * ndcg10,
               "test/ndcg@10": ndcg10, "test/head/ndcg@10": ndcg10, "test/prefix1/ndcg@5": 0.5}  # fmt: skip
    record = {"row": row, "seed": seed, "wall_s": 60.0 * (seed + 1), "command": f"genrec fit --seed {seed}",
              "metrics": metrics}  # fmt: skip
    (directory / "result.json").write_text(json.dumps(record))


def test_rows_parse_and_commands_layer_configs(tmp_path: Path) -> None:
    row = experiments.parse_row("+Curriculum=configs/tiger_curriculum.yaml+configs/presets/cpu.yaml")
    assert row.name == "+Curriculum" and row.slug == "Curriculum"
    cmd = experiments.fit_command(
        row, 3, tmp_path, ["configs/data/ml100k.yaml"], ["--trainer.max_steps", "5"]
    )
    configs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"]
    assert configs == [
        "configs/tiger_curriculum.yaml",
        "configs/presets/cpu.yaml",
        "configs/data/ml100k.yaml",
    ]
    assert cmd[cmd.index("--seed_everything") + 1] == "3" and cmd[-2:] == ["--trainer.max_steps", "5"]
    assert cmd[cmd.index("--trainer.logger.init_args.version") + 1] == "seed3"
    with pytest.raises(Exception, match="not found"):
        experiments.parse_row("X=configs/missing.yaml")
    with pytest.raises(Exception, match="NAME=config"):
        experiments.parse_row("configs/tiger.yaml")


def test_report_is_mean_and_sample_std_over_finished_seeds(tmp_path: Path) -> None:
    values = {"TIGER": [0.030, 0.034, 0.038], "+Curriculum": [0.040, 0.036]}
    for row, ndcgs in values.items():
        for seed, value in enumerate(ndcgs):
            fake_result(tmp_path, row, seed, value)
    rows = experiments.load_results(tmp_path)
    text = experiments.report(rows, "T", baseline="TIGER")
    for row, ndcgs in values.items():
        cell = f"{statistics.fmean(ndcgs):.4f} ± {statistics.stdev(ndcgs):.4f}"
        line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
        assert cell in line, line
    relative = 100 * (statistics.fmean(values["+Curriculum"]) / statistics.fmean(values["TIGER"]) - 1)
    assert f"{relative:+.1f}%" in text
    assert "prefix-1 NDCG@5" in text and "head NDCG@10" in text


def test_finished_runs_are_skipped_and_notes_survive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    fake_result(runs, "TIGER", 0, 0.03)
    config = tmp_path / "tiger.yaml"
    config.write_text("seed_everything: 1\n")
    monkeypatch.setattr(experiments.subprocess, "run", lambda *a, **k: pytest.fail("finished run re-ran"))
    report = tmp_path / "report.md"
    report.write_text(f"old tables\n{experiments.NOTES_MARKER}\nmy analysis\n")
    experiments.main(
        ["--row", f"TIGER={config}", "--seeds", "0", "--runs", str(runs), "--report", str(report)]
    )
    text = report.read_text()
    assert "old tables" not in text and text.rstrip().endswith("my analysis") and "| TIGER |" in text
