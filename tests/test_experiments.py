"""benchmarks/experiments.py: command lines, resumable runs, mean ± std tables, kept notes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
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


def test_wall_time_leaves_out_resumed_runs(tmp_path: Path) -> None:
    """A resumed run records only its last attempt, so it would pull the per-run cost down."""
    fake_result(tmp_path, "TIGER", 0, 0.03)  # 60 s
    fake_result(tmp_path, "TIGER", 1, 0.03)  # 120 s
    fake_result(tmp_path, "TIGER", 2, 0.03)  # 180 s, resumed below
    resumed = tmp_path / "TIGER" / "seed2" / "result.json"
    resumed.write_text(json.dumps({**json.loads(resumed.read_text()), "resumed": True}))
    records = experiments.load_results(tmp_path)["TIGER"]
    assert experiments.wall_cell(records) == "1.5"  # (60 + 120) / 2 s
    assert experiments.wall_cell([r for r in records if r.get("resumed")]) == "–"


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


def test_a_stopped_run_continues_from_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory with checkpoints/last.ckpt and no result.json is resumed with the same
    command plus --ckpt_path (nothing deleted); one without a checkpoint starts over."""
    runs = tmp_path / "runs"
    config = tmp_path / "tiger.yaml"
    config.write_text("seed_everything: 1\n")
    row = experiments.parse_row(f"TIGER={config}")
    stopped = experiments.run_dir(runs, row, 0)
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (stopped / "fit.log").write_text("epoch 1 of the first attempt\n")
    fresh = experiments.run_dir(runs, row, 1)
    fresh.mkdir(parents=True)
    (fresh / "fit.log").write_text("crashed before any checkpoint\n")
    calls: list[list[str]] = []

    def fake_fit(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        directory = Path(cmd[cmd.index("--trainer.logger.init_args.save_dir") + 1]) / "TIGER"
        seed = cmd[cmd.index("--seed_everything") + 1]
        metrics = {"metrics": {"test/ndcg@10": 0.05, "test/recall@10": 0.1}}
        (directory / f"seed{seed}" / "test_metrics.json").write_text(json.dumps(metrics))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_fit)
    experiments.main(["--row", f"TIGER={config}", "--seeds", "0", "1", "--runs", str(runs)])
    resumed, restarted = sorted(calls, key=lambda c: c[c.index("--seed_everything") + 1])
    assert resumed[-2:] == ["--ckpt_path", str(stopped / "checkpoints" / "last.ckpt")]
    assert resumed[:-2] == experiments.fit_command(row, 0, runs, [], [])  # the same run, continued
    assert restarted == experiments.fit_command(row, 1, runs, [], [])
    assert (stopped / "checkpoints" / "last.ckpt").read_bytes() == b"weights"  # kept, not deleted
    assert (stopped / "fit.log").read_text().startswith("epoch 1 of the first attempt")  # appended to
    assert "crashed" not in (fresh / "fit.log").read_text()  # started over
    first = json.loads((stopped / "result.json").read_text())
    assert first["resumed"] is True and "--ckpt_path" not in first["command"]
    assert json.loads((fresh / "result.json").read_text())["resumed"] is False


def fake_users(runs: Path, row: str, seed: int, ndcg10: np.ndarray, groups: np.ndarray) -> dict:
    """A run's result.json and test_users.parquet that agree (metrics = per-user means)."""
    from genrec_lightning.callbacks.test_users import FILE_NAME, METADATA_KEY

    n = len(ndcg10)
    directory = runs / experiments.Row(row, ("x.yaml",)).slug / f"seed{seed}"
    directory.mkdir(parents=True)
    columns = {"recall@5": ndcg10 > 0.5, "ndcg@5": ndcg10 * (ndcg10 > 0.5), "recall@10": ndcg10 > 0,
               "ndcg@10": ndcg10, "recall@20": ndcg10 > 0, "ndcg@20": ndcg10}  # fmt: skip
    frame = pl.DataFrame({"user": np.arange(n), "target": np.arange(n) % 50, "group": groups,
                          **{k: np.asarray(v, dtype=float) for k, v in columns.items()}})  # fmt: skip
    meta = json.dumps({"dataset": "toy", "data_hash": "h", "num_items": 50})
    frame.write_parquet(directory / FILE_NAME, metadata={METADATA_KEY: meta})
    metrics = {f"test/{k}": float(frame[k].mean()) for k in columns}
    for g in ("head", "tail"):
        part = frame.filter(pl.col("group") == g)
        metrics |= {f"test/{g}/{k}": float(part[k].mean()) for k in ("recall@10", "ndcg@10")}
    record = {"row": row, "seed": seed, "wall_s": 60.0, "command": "genrec fit", "metrics": metrics}
    (directory / "result.json").write_text(json.dumps(record))
    return metrics


def test_rows_are_compared_with_the_baseline_user_by_user(tmp_path: Path) -> None:
    """A planted per-user gain gets its star and CI; a null row does not; a row without per-user
    files falls back to the means and says why."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 943
    groups = np.where(np.arange(n) % 2 == 0, "head", "tail")
    for seed in range(3):
        base = np.where(rng.random(n) < 0.1, 1 / np.log2(rng.integers(0, 10, n) + 2), 0.0)
        fake_users(tmp_path, "TIGER", seed, base, groups)
        gain = base + 0.1 * (np.random.default_rng(seed + 5).random(n) < 0.3)
        fake_users(tmp_path, "+Gain", seed, gain, groups)
        fake_users(tmp_path, "+Same", seed, base, groups)
    fake_result(tmp_path, "NoFiles", 0, 0.03)
    rows = experiments.load_results(tmp_path)
    rows = {name: rows[name] for name in ("TIGER", "+Gain", "+Same", "NoFiles")}
    keys = [key for _, key in experiments.MAIN_COLUMNS] + ["test/head/ndcg@10", "test/tail/ndcg@10"]
    comparisons, problems = experiments.compare_rows(rows, "TIGER", keys, resamples=1000)
    assert set(comparisons) == {"+Gain", "+Same"}, problems
    assert "no test_users.parquet" in problems["NoFiles"]
    gain = comparisons["+Gain"]["test/ndcg@10"]
    assert gain.significant and gain.ci_low > 0 and gain.n == n
    same = comparisons["+Same"]["test/ndcg@10"]
    assert same.t_pvalue == 1.0 and not same.significant
    assert comparisons["+Gain"]["test/head/ndcg@10"].n == n // 2 + 1  # only the head users

    text = experiments.report(rows, "T", "TIGER", comparisons, problems, resamples=1000)
    main_line = next(line for line in text.splitlines() if line.startswith("| +Gain |"))
    ndcg = [r["metrics"]["test/ndcg@10"] for r in rows["+Gain"]]
    assert f"{statistics.fmean(ndcg):.4f} ± {statistics.stdev(ndcg):.4f}*" in main_line
    relative = next(line for line in text.split("### Relative to TIGER")[1].splitlines() if "+Gain" in line)
    cell = f"{100 * gain.relative:+.1f}%* [{100 * gain.ci_low:+.1f}, {100 * gain.ci_high:+.1f}]"
    assert cell in relative and f"{100 * gain.min_detectable_relative:.1f}%" in relative
    same_line = next(line for line in text.splitlines() if line.startswith("| +Same |"))
    assert "*" not in same_line
    assert "(means)" in next(line for line in text.split("### Relative to TIGER")[1].splitlines()
                             if "NoFiles" in line)  # fmt: skip
    assert f"{n} users; seeds per row: TIGER 3, +Gain 3, +Same 3" in text
    assert "No per-user comparison for NoFiles" in text and "80% power" in text


def test_an_archived_sweep_survives_losing_its_log_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--archive: a finished run leaves its small files and its validation curve (from the event
    files) in the archive; with the log root gone, the run is not trained again and still reported."""
    from torch.utils.tensorboard import SummaryWriter

    from genrec_lightning.callbacks.test_users import FILE_NAME, METADATA_KEY

    runs, archive = tmp_path / "runs", tmp_path / "archive"
    config = tmp_path / "tiger.yaml"
    config.write_text("seed_everything: 1\n")
    curve = {0: [0.02, 0.05, 0.04], 1: [0.04, 0.03, 0.06]}  # val/ndcg@10 of seeds 0, 1 after epochs 1-3

    def fake_fit(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seed = int(cmd[cmd.index("--seed_everything") + 1])
        directory = Path(cmd[cmd.index("--trainer.logger.init_args.save_dir") + 1]) / "TIGER" / f"seed{seed}"
        writer = SummaryWriter(str(directory))
        for epoch, value in enumerate(curve[seed]):
            step = 10 * (epoch + 1) - 1
            writer.add_scalar("train/loss", 1.0, step)
            writer.add_scalar("val/ndcg@10", value, step)
            writer.add_scalar("epoch", float(epoch), step)
        writer.close()
        metrics = {"metrics": {"test/ndcg@10": 0.05 + seed / 100, "test/recall@10": 0.1}}
        (directory / "test_metrics.json").write_text(json.dumps(metrics))
        (directory / "config.yaml").write_text("seed_everything: 1\n")
        users = pl.DataFrame(
            {"user": [0, 1], "target": [3, 4], "recall@10": [0.0, 1.0], "ndcg@10": [0.0, 0.5]}
        )
        meta = json.dumps({"dataset": "toy", "data_hash": "h", "num_items": 50})
        users.write_parquet(directory / FILE_NAME, metadata={METADATA_KEY: meta})
        (directory / "checkpoints").mkdir()
        (directory / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_fit)
    argv = ["--row", f"TIGER={config}", "--seeds", "0", "1", "--runs", str(runs), "--archive", str(archive)]
    experiments.main(argv)
    kept = archive / "TIGER" / "seed0"
    assert sorted(p.name for p in kept.iterdir()) == [
        "config.yaml",
        "curve.csv",
        "result.json",
        "test_metrics.json",
        FILE_NAME,
    ]
    written = pl.read_csv(kept / "curve.csv")
    assert written["epoch"].to_list() == [1, 2, 3] and written["step"].to_list() == [9, 19, 29]
    assert np.allclose(written["val/ndcg@10"].to_numpy(), curve[0]) and "train/loss" not in written.columns

    late = runs / "Curriculum" / "seed0"  # finished by a sweep without --archive: kept by --report-only
    shutil.copytree(runs / "TIGER" / "seed0", late)
    record = json.loads((late / "result.json").read_text()) | {"row": "+Curriculum"}
    (late / "result.json").write_text(json.dumps(record))
    experiments.main(["--runs", str(runs), "--archive", str(archive), "--report-only"])
    assert (archive / "Curriculum" / "seed0" / "curve.csv").is_file()

    shutil.rmtree(runs)  # a new session: only the archive (committed) is left
    monkeypatch.setattr(experiments.subprocess, "run", lambda *a, **k: pytest.fail("an archived run re-ran"))
    report = tmp_path / "report.md"
    experiments.main([*argv, "--report", str(report)])
    text = report.read_text()
    assert f"{statistics.fmean([0.05, 0.06]):.4f} ± {statistics.stdev([0.05, 0.06]):.4f}" in text
    means = [statistics.fmean(v) for v in zip(*curve.values(), strict=True)]  # 0.03, 0.04, 0.05
    curve_line = next(line for line in text.splitlines() if line.startswith("| TIGER (2) |"))
    assert curve_line == "| TIGER (2) | " + " | ".join(f"{m:.4f}" for m in means) + " | 3 |"


def fake_ids(directory: Path, codes: bytes) -> str:
    """A semantic-ID artifact directory whose meta.json records the SHA-256 of its codes file."""
    import hashlib

    directory.mkdir(parents=True)
    (directory / "codes.safetensors").write_bytes(codes)
    sha = hashlib.sha256(codes).hexdigest()
    (directory / "meta.json").write_text(json.dumps({"format": 1, "sha256": sha}))
    return sha


def test_pinned_ids_reach_every_fit_and_runs_on_other_ids_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ids: each fit trains on the artifact (semantic_ids_from), its result records the codes'
    SHA-256, the report names them; an archived run that trained on other IDs is refused, not
    silently mixed into the table, and a directory that is not an artifact fails before any fit."""
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    config = tmp_path / "tiger.yaml"
    config.write_text("seed_everything: 1\n")
    pinned = tmp_path / "ids"
    sha = fake_ids(pinned, b"codes of the pinned build")
    calls: list[list[str]] = []

    def fake_fit(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        seed = cmd[cmd.index("--seed_everything") + 1]
        directory = Path(cmd[cmd.index("--trainer.logger.init_args.save_dir") + 1]) / "TIGER" / f"seed{seed}"
        metrics = {"metrics": {"test/ndcg@10": 0.05, "test/recall@10": 0.1}}
        (directory / "test_metrics.json").write_text(json.dumps(metrics))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(experiments.subprocess, "run", fake_fit)
    report = tmp_path / "report.md"
    argv = ["--row", f"TIGER={config}", "--runs", str(runs), "--ids", str(pinned), "--report", str(report)]
    experiments.main([*argv, "--seeds", "0"])
    (cmd,) = calls
    assert cmd[cmd.index(experiments.IDS_OPTION) + 1] == str(pinned)
    record = json.loads((runs / "TIGER" / "seed0" / "result.json").read_text())
    assert record["semantic_ids"] == {"path": str(pinned), "sha256": sha}
    assert f"Semantic IDs: `{pinned}` for every run (codes sha256 `{sha[:12]}`)" in report.read_text()

    # seed 1 was archived by a session that built its own IDs (no record of them): refused
    other = archive / "TIGER" / "seed1"
    other.mkdir(parents=True)
    unpinned = {"row": "TIGER", "seed": 1, "wall_s": 60.0, "command": "genrec fit"}
    (other / "result.json").write_text(
        json.dumps(unpinned | {"metrics": {"test/ndcg@10": 0.07, "test/recall@10": 0.1}})
    )
    calls.clear()
    experiments.main([*argv, "--seeds", "0", "1", "--archive", str(archive)])
    assert calls == []  # neither seed trained again
    err = capsys.readouterr().err
    assert "TIGER seed 1 trained on other semantic IDs" in err and f"move {other}" in err
    text = report.read_text()
    assert (
        "Warning: the runs trained on different semantic IDs" in text
        and "not recorded`: TIGER seed 1" in text
    )

    # a record without the field but whose command names the artifact counts as trained on it
    record = json.loads((other / "result.json").read_text())
    record["command"] = f"genrec fit {experiments.IDS_OPTION} {pinned}"
    (other / "result.json").write_text(json.dumps(record))
    assert experiments.record_ids(record) == (sha, str(pinned))
    experiments.main([*argv, "--seeds", "0", "1", "--archive", str(archive)])
    assert calls == [] and "for every run" in report.read_text()

    for bad, message in ((tmp_path / "nothing", "not a semantic-ID artifact"), (pinned, "does not match")):
        if bad == pinned:
            (pinned / "codes.safetensors").write_bytes(b"edited by hand")
        with pytest.raises(SystemExit) as exit_info:
            experiments.main(["--row", f"TIGER={config}", "--runs", str(runs), "--ids", str(bad)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert calls == []
