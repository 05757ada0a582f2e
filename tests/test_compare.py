"""Per-user test outcomes (`test_users.parquet`) and `genrec compare` on them."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from test_recommender import ROOT, data, tiny_experiment  # noqa: F401  (module fixture `data`)

from genrec_lightning.analysis.compare import load_side
from genrec_lightning.analysis.runs import read_config
from genrec_lightning.callbacks.test_users import FILE_NAME, METADATA_KEY, read_identity
from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.cli.compare import main as compare_main
from genrec_lightning.metrics import RankingMetrics, UserOutcomes

KS = (1, 5, 10, 20)

_spec = importlib.util.spec_from_file_location("experiments", ROOT / "benchmarks" / "experiments.py")
experiments = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("experiments", experiments)
_spec.loader.exec_module(experiments)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ the metric
def test_user_outcomes_match_a_loop_and_the_ranking_metrics() -> None:
    """Per row: 0-based rank (or -1), hit and 1/log2(rank+2) gain, as a loop computes them; the
    column means are exactly what RankingMetrics logs. Lists shorter than K and -1 slots included."""
    gen = torch.Generator().manual_seed(0)
    outcomes, ranking = UserOutcomes(KS), RankingMetrics(KS, prefix="test/")
    expected: list[tuple[int, int, int]] = []
    user = 0
    for columns in (20, 20, 7):  # the last batch returns shorter lists
        ranked = torch.stack([torch.randperm(30, generator=gen)[:columns] for _ in range(16)])
        ranked[:3, -2:] = -1  # empty slots
        target = torch.randint(0, 30, (16,), generator=gen)
        users = torch.arange(user, user + 16)
        outcomes.update(ranked, target, users)
        ranking.update(ranked, target)
        for row in range(16):
            found = [i for i, item in enumerate(ranked[row].tolist()) if item == target[row].item()]
            expected.append((user + row, target[row].item(), found[0] if found else -1))
        user += 16
    got = outcomes.compute()
    assert got["user"].tolist() == [e[0] for e in expected]
    assert got["target"].tolist() == [e[1] for e in expected]
    assert got["rank"].tolist() == [e[2] for e in expected]
    assert (got["rank"] >= 0).sum() > 5  # the case has hits to check
    logged = ranking.compute()
    for k in KS:
        hit = [1.0 if 0 <= r < k else 0.0 for *_, r in expected]
        gain = [1 / math.log2(r + 2) if 0 <= r < k else 0.0 for *_, r in expected]
        assert got[f"recall@{k}"].tolist() == hit
        assert got[f"ndcg@{k}"].tolist() == pytest.approx(gain, abs=1e-12)
        for name in (f"recall@{k}", f"ndcg@{k}"):
            assert got[name].mean().float() == logged[f"test/{name}"], name


# ------------------------------------------------------------------------------ real runs
def _tiger_run(tmp_path: Path, data: dict[str, Any]) -> Path:  # noqa: F811
    config = tiny_experiment(tmp_path, data)
    GenRecCLI(args=["fit", "--config", str(config), "--trainer.enable_progress_bar", "false"])
    return tmp_path / "runs" / "tiger" / "version_0"


def _most_popular_run(tmp_path: Path, data: dict[str, Any], *extra: str) -> Path:  # noqa: F811
    GenRecCLI(
        args=[
            "test",
            "--config",
            str(ROOT / "configs/baselines/most_popular.yaml"),
            "--data.init_args.cache_dir",
            str(data["cache"]),
            "--data.init_args.eval_batch_size",
            "128",
            "--trainer.limit_test_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            *extra,
        ]  # fmt: skip
    )
    return sorted((tmp_path / "runs" / "most_popular").glob("version_*"))[-1]


def test_fit_and_test_write_per_user_outcomes_and_compare_reads_them(
    tmp_path: Path,
    data: dict[str, Any],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiger = _tiger_run(tmp_path, data)
    frame = pl.read_parquet(tiger / FILE_NAME)
    metrics = json.loads((tiger / "test_metrics.json").read_text())["metrics"]
    assert frame.columns[:6] == ["user", "user_raw", "target", "target_raw", "rank", "group"]
    assert frame.height == 256 and frame["user"].is_unique().all()  # 2 test batches of 128 users
    assert frame["user"].is_sorted() and frame["user_raw"].null_count() == 0
    assert set(frame["group"].unique()) <= {"head", "tail"} and frame["group"].null_count() == 0
    # The file's means are the logged test metrics, to float32 precision (the logged dtype).
    for k in KS:
        for name in (f"recall@{k}", f"ndcg@{k}"):
            assert float(np.float32(frame[name].mean())) == metrics[f"test/{name}"], name
    # Rank is 1-based; recall/NDCG follow from it.
    hit = frame.filter(pl.col("rank").is_not_null())
    assert hit.height > 0 and (hit["recall@20"] == 1.0).all()
    top10 = hit.filter(pl.col("rank") <= 10)
    assert np.allclose(top10["ndcg@10"], 1 / np.log2(top10["rank"].to_numpy() + 1))
    assert (frame.filter(pl.col("rank").is_null())["ndcg@20"] == 0).all()
    identity = read_identity(tiger / FILE_NAME)
    assert identity["dataset"] == "ml-100k" and len(identity["data_hash"]) == 12
    assert identity["checkpoint"].endswith(".ckpt") and identity["model"] == "GenerativeRecommender"
    # The group of a target agrees with the head/tail metrics logged for the same test.
    head = frame.filter(pl.col("group") == "head")
    assert float(np.float32(head["ndcg@10"].mean())) == metrics["test/head/ndcg@10"]

    # `genrec test` of the same checkpoint into the fit's own directory keeps its config.yaml.
    config_before = (tiger / "config.yaml").read_text()
    (tiger / FILE_NAME).unlink()
    main(["test", "--config", str(tiger / "config.yaml"), "--ckpt_path", identity["checkpoint"],
          "--trainer.logger.init_args.version", "0", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert (tiger / "config.yaml").read_text() == config_before and (tiger / "test_config.yaml").is_file()
    assert pl.read_parquet(tiger / FILE_NAME).equals(frame)

    # The experiment runner writes the file of a run tested before it existed, in the run's directory.
    (tiger / FILE_NAME).unlink()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    experiments.write_test_users(tiger, threads=1)
    assert pl.read_parquet(tiger / FILE_NAME).equals(frame)

    popular = _most_popular_run(tmp_path, data)
    assert not (popular / "config.yaml").exists()  # only scored: its config is the test's own
    assert read_config(popular)["model"]["class_path"].endswith("MostPopular")
    capsys.readouterr()
    main(["compare", str(tiger), "--against", str(popular), "--metric", "ndcg@10", "recall@10"])
    table = capsys.readouterr().out
    main(["compare", str(tiger), "--against", str(popular), "--metric", "ndcg@10", "recall@10", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["users"] == 256 and list(report["metrics"]) == ["ndcg@10", "recall@10"]
    other = json.loads((popular / "test_metrics.json").read_text())["metrics"]
    for name, result in report["metrics"].items():
        assert float(np.float32(result["mean_a"])) == metrics[f"test/{name}"]
        assert float(np.float32(result["mean_b"])) == other[f"test/{name}"]
        line = next(line for line in table.splitlines() if line.startswith(name))
        assert f"{result['mean_a']:.4f}" in line and f"{result['mean_b']:.4f}" in line
        assert f"{result['t_pvalue']:.3f}" in line or f"{result['t_pvalue']:.1e}" in line
        assert ("*" in line) == result["significant"]
    assert "256 test users" in table

    # A run tested on other users is refused, naming the difference.
    fewer = _most_popular_run(tmp_path, data, "--trainer.limit_test_batches", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tiger), "--against", str(fewer)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tested 256 users" in err and "128" in err


# ------------------------------------------------------------------------------ synthetic runs
def _write_run(directory: Path, ndcg: np.ndarray, identity: dict[str, Any] | None = None,
               users: np.ndarray | None = None) -> Path:  # fmt: skip
    directory.mkdir(parents=True)
    n = len(ndcg)
    users = np.arange(n) if users is None else users
    frame = pl.DataFrame({"user": users, "target": users % 7, "rank": pl.Series([None] * n, dtype=pl.Int64),
                          "ndcg@10": ndcg, "recall@10": (ndcg > 0).astype(float)})  # fmt: skip
    meta = {"dataset": "toy", "data_hash": "abc", "num_items": 7, **(identity or {})}
    frame.write_parquet(directory / FILE_NAME, metadata={METADATA_KEY: json.dumps(meta)})
    return directory


def _ndcg_like(rng: np.random.Generator, n: int, hit_rate: float) -> np.ndarray:
    rank = rng.integers(0, 10, n)
    return np.where(rng.random(n) < hit_rate, 1 / np.log2(rank + 2), 0.0)


def _compare_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    compare_main([*args, "--json", "--resamples", "2000"])
    return json.loads(capsys.readouterr().out)


def test_compare_averages_seeds_per_user_and_detects_a_planted_gain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    base = [_ndcg_like(rng, 943, 0.08) for _ in range(3)]
    runs_b = [_write_run(tmp_path / f"b{s}", v) for s, v in enumerate(base)]
    # Identical runs: no difference at all.
    same = _compare_json(capsys, *map(str, runs_b), "--against", *map(str, runs_b))["metrics"]["ndcg@10"]
    assert same["t_pvalue"] == 1.0 and same["wilcoxon_pvalue"] == 1.0 and not same["significant"]
    assert same["ci_low"] <= 0.0 <= same["ci_high"]
    # Every user's value averaged over the seeds of a side.
    side = load_side(runs_b, ["ndcg@10"])
    assert np.allclose(side.values("ndcg@10"), np.mean(base, axis=0))
    # A planted improvement of 30% of the users is found by both tests, and the CI holds it.
    lifted = [
        values + 0.2 * (np.random.default_rng(10 + s).random(943) < 0.3) for s, values in enumerate(base)
    ]
    better = [_write_run(tmp_path / f"a{s}", values) for s, values in enumerate(lifted)]
    result = _compare_json(capsys, *map(str, better), "--against", *map(str, runs_b))["metrics"]["ndcg@10"]
    truth = np.mean(lifted) / np.mean(base) - 1
    assert result["significant"] and result["t_pvalue"] < 0.05 and result["wilcoxon_pvalue"] < 0.05
    assert 0 < result["ci_low"] < truth < result["ci_high"]
    assert result["relative"] == pytest.approx(truth)


def test_compare_refuses_other_data_other_users_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    a = _write_run(tmp_path / "a", _ndcg_like(rng, 50, 0.2))
    other_data = _write_run(tmp_path / "b", _ndcg_like(rng, 50, 0.2), {"data_hash": "def"})
    other_users = _write_run(tmp_path / "c", _ndcg_like(rng, 50, 0.2), users=np.arange(1, 51))
    empty = tmp_path / "d"
    empty.mkdir()
    cases = [
        (other_data, "data_hash abc vs def"),
        (other_users, "1 only in the first (e.g. [0])"),
        (empty, "has no test_users.parquet: test the run to write it"),
        (tmp_path / "nowhere", "does not exist"),
    ]
    for against, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", str(a), "--against", str(against)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit):
        main(["compare", str(a), "--against", str(a), "--metric", "mrr"])
    assert "choose from ndcg@10, recall@10" in capsys.readouterr().err
