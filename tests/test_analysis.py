"""Analysis: run readers, figure helpers against brute-force references, `genrec report` on real tiny runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image
from test_unigrec import ROOT, stages, tiny_data_args, tiny_unigrec_config  # noqa: F401  (module fixture `stages`)
from torch.utils.tensorboard import SummaryWriter

from genrec_lightning.analysis import figures as F
from genrec_lightning.analysis.report import Report
from genrec_lightning.analysis.runs import (
    SCALAR_SCHEMA,
    check_run_dir,
    config_value,
    last_values,
    load_codebooks,
    load_id_table,
    read_scalars,
    series,
)
from genrec_lightning.cli import GenRecCLI, main
from genrec_lightning.config_files import load_config
from genrec_lightning.semantic_ids import SemanticIds

TINY_T5 = dict(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)


# ------------------------------------------------------------------------------ unit tests
def test_change_patterns_match_a_loop_over_items() -> None:
    generator = torch.Generator().manual_seed(0)
    before = torch.randint(0, 3, (200, 3), generator=generator)
    after = torch.where(torch.rand(200, 3, generator=generator) < 0.3, (before + 1) % 3, before)
    shares = F.change_patterns(before, after)
    expected: dict[str, float] = {}
    for b, a in zip(before.tolist(), after.tolist(), strict=True):
        changed = [f"L{i + 1}" for i in range(3) if b[i] != a[i]]
        key = "+".join(changed) or "unchanged"
        expected[key] = expected.get(key, 0.0) + 1 / 200
    assert len(shares) == 8 and sum(shares.values()) == pytest.approx(1.0)
    for key, share in shares.items():
        assert share == pytest.approx(expected.get(key, 0.0)), key
    with pytest.raises(ValueError, match="differ in shape"):
        F.change_patterns(before, after[:, :2])


def test_pca_matches_the_covariance_eigenvectors() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 5, generator=generator) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])
    projected = F.pca_2d(x).double()
    centred = (x - x.mean(0)).double()
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    reference = centred @ vectors[:, [-1, -2]]  # the two largest eigenvalues
    for j in range(2):  # equal up to each component's sign
        assert torch.allclose(projected[:, j].abs(), reference[:, j].abs(), atol=1e-4)
    assert projected[:, 0].var() >= projected[:, 1].var()
    assert F.pca_2d(torch.randn(4, 1)).shape == (4, 2)  # 1-d codewords: second component zero


def test_code_counts_match_a_loop() -> None:
    codes = torch.tensor([[0, 2], [0, 1], [3, 1]])
    counts = F.code_counts(codes, [4, 3])
    assert [c.tolist() for c in counts] == [[2, 0, 0, 1], [0, 2, 1]]


def test_popularity_bins_and_curriculum_sweep_read_metrics_and_configs() -> None:
    metrics = {f"test/popularity_bin{j}/{kind}": j / 10 + (kind == "target") for j in range(3)
               for kind in ("predicted", "target")}  # fmt: skip
    predicted, target = F.popularity_bins(metrics)
    assert predicted == [0.0, 0.1, 0.2] and target == [1.0, 1.1, 1.2]
    with pytest.raises(ValueError, match="CoverageMetrics"):
        F.popularity_bins({"test/ndcg@10": 0.1})
    config = {"model": {"init_args": {"loss": {"init_args": {"decay": 2e-5}}}}}
    assert config_value(config, F.DECAY_KEY) == 2e-5 and config_value(config, "model.x", 7) == 7
    runs = {"b": ({"model": {"init_args": {"loss": {"init_args": {"decay": 3e-5}}}}}, {"test/ndcg@5": 0.2}),
            "a": (config, {"test/ndcg@5": 0.1}), "no_decay": ({}, {"test/ndcg@5": 0.5})}  # fmt: skip
    sweep = F.curriculum_sweep(runs)
    assert sweep["run"].to_list() == ["a", "b"] and sweep["c"].to_list() == [2e-5, 3e-5]
    with pytest.raises(ValueError, match="decay"):
        F.curriculum_sweep({"x": ({}, {})})
    # A run-relative curriculum is placed at the c it resolved to and logged, not at `decay`.
    relative = {"model": {"init_args": {"loss": {"init_args": {"decay": 2e-5, "decay_at": 0.5}}}}}
    logged = pl.DataFrame(
        {
            "tag": ["curriculum/c", "curriculum/c", "curriculum/factor"],
            "step": [0, 50, 50],
            "value": [1e-3, 1e-3, 0.9],
            "wall_time": [0.0, 1.0, 1.0],
        }
    )
    assert F.curriculum_rate(relative, logged) == pytest.approx(1e-3)
    assert F.curriculum_rate(relative) is None and F.curriculum_rate(config) == 2e-5
    runs["r"] = (relative, {"test/ndcg@5": 0.3})
    sweep = F.curriculum_sweep(runs, scalars={"r": logged})
    assert sweep["run"].to_list() == ["a", "b", "r"] and sweep["c"].to_list() == pytest.approx(
        [2e-5, 3e-5, 1e-3]
    )


def test_read_scalars_merges_event_files_and_keeps_the_latest_value(tmp_path: Path) -> None:
    first = SummaryWriter(str(tmp_path), filename_suffix=".a")
    for step in range(3):
        first.add_scalar("train/loss", 1.0 - step / 10, step)
    first.close()
    resumed = SummaryWriter(str(tmp_path), filename_suffix=".b")  # a resumed run logs step 2 again
    resumed.add_scalar("train/loss", 0.5, 2)
    resumed.add_scalar("train/loss", 0.4, 3)
    resumed.add_scalar("ids/collision_rate", 0.1, 3)
    resumed.close()
    frame = read_scalars(tmp_path)
    steps, values = series(frame, "train/loss")
    assert steps == [0, 1, 2, 3] and values == pytest.approx([1.0, 0.9, 0.5, 0.4])
    assert series(frame, "missing") == ([], [])
    assert last_values(frame, "ids/") == pytest.approx({"ids/collision_rate": 0.1})
    assert check_run_dir(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="version directory"):
        check_run_dir(ROOT / "configs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_run_dir(tmp_path / "missing")


def nonblank_png(path: Path, min_side: int = 200) -> None:
    """The file is a PNG of a plausible size whose pixels are not all one colour."""
    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side, (path, image.size)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5.0 and (pixels < 128).mean() > 0.005, f"{path} looks blank"


def test_report_writes_figures_atomically_and_lists_what_it_skipped(tmp_path: Path) -> None:
    report = Report(tmp_path / "out")
    report.add("usage", lambda: F.plot_code_usage(torch.randint(0, 8, (100, 2)), [8, 8]))
    report.add("weights", lambda: F.plot_objective_weights(pl.DataFrame(schema=SCALAR_SCHEMA)))
    assert report.written == [tmp_path / "out" / "usage.png"]
    assert len(report.skipped) == 1 and "objective weights" in report.skipped[0]
    nonblank_png(report.written[0])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["usage.png"]  # no temp files left


# ------------------------------------------------------------------------------ tiny real runs
def tiny_curriculum_config(stages: dict[str, Any], tmp_path: Path, decay: float | None) -> Path:  # noqa: F811
    """configs/tiger_curriculum.yaml shrunk to seconds on the stage-1 IDs, curriculum speed `decay`
    (None: the shipped run-relative curriculum, half-way at half the planned steps)."""
    cfg = load_config(ROOT / "configs/tiger_curriculum.yaml")
    cfg["model"]["init_args"]["network"]["init_args"] = dict(TINY_T5)
    if decay is not None:
        cfg["model"]["init_args"]["loss"]["init_args"].update(decay=decay, decay_at=None)
    cfg["model"]["init_args"]["optimization"]["warmup_steps"] = 2
    cfg["data"]["init_args"].update(tiny_data_args(stages))
    limits = {"limit_train_batches": 8, "limit_val_batches": 1, "limit_test_batches": 2}
    cfg["trainer"].update(max_epochs=1, check_val_every_n_epoch=1, log_every_n_steps=1, **limits)
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), name="sweep")
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp_path / f"ckpt_{decay}")
        if callback["class_path"].endswith("ObjectiveWeights"):
            callback["init_args"]["every_n_steps"] = 1
    path = tmp_path / f"curriculum_{decay}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_runs(stages: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """A UniGRec run and two curriculum runs (c = 0.05, run-relative), each fitted and tested in seconds."""
    tmp = tmp_path_factory.mktemp("analysis")
    (tmp / "unigrec").mkdir()
    GenRecCLI(args=["fit", "--config", str(tiny_unigrec_config(stages, tmp / "unigrec"))])
    for decay in (0.05, None):
        GenRecCLI(args=["fit", "--config", str(tiny_curriculum_config(stages, tmp, decay))])
    sweep = sorted((tmp / "runs" / "sweep").glob("version_*"))
    assert len(sweep) == 2
    # Figure 4: two stage-1 runs that differ in lambda_CU
    key = "--model.init_args.tokenizer.init_args.quantizer.init_args.uniformity_weight"
    pretrain = str(stages["paths"]["pretrain"])
    for weight in ("0.01", "0.001"):
        save_dir = ["--trainer.logger.init_args.save_dir", str(tmp / f"cu{weight}")]
        GenRecCLI(args=["fit", "--config", pretrain, key, weight, *save_dir])
    artifact = stages["dm"].semantic_ids_path
    return {
        "tmp": tmp,
        "unigrec": tmp / "unigrec" / "runs" / "unigrec" / "version_0",
        "stage1": [tmp / f"cu{w}" / "unigrec_pretrain" / "version_0" for w in ("0.01", "0.001")],
        "cache": stages["tmp"] / "cache",
        "sweep": sweep,
        "ids_yaml": stages["paths"]["pretrain"],
        "ids_dir": artifact,
    }


def test_run_readers_find_codebooks_id_table_and_metrics(tiny_runs: dict[str, Any]) -> None:
    run = tiny_runs["unigrec"]
    books = load_codebooks(run)
    assert books is not None and books.shape == (2, 16, 8)  # the tiny stage-1 quantizer
    table = load_id_table(run)
    ids = SemanticIds.load(tiny_runs["ids_dir"])
    assert table is not None and table.shape == ids.codes.shape
    # The stage-1 artifact stores the weights the joint stage started from: same codebook shape.
    assert load_codebooks(tiny_runs["ids_dir"]).shape == books.shape
    rates, counts = F.evolution_from_scalars(read_scalars(run))
    assert len(rates) == 2 and sum(counts.values()) == pytest.approx(1.0, abs=1e-6)
    # The logged per-level change since the start equals comparing the two tables directly.
    patterns = F.change_patterns(ids.raw_codes, table[:, :2])
    assert patterns["L1"] + patterns["L1+L2"] == pytest.approx(rates[0], abs=1e-6)


def test_genrec_report_writes_every_figure_for_real_runs(
    tiny_runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    runs = [str(tiny_runs["unigrec"]), *map(str, tiny_runs["sweep"]), *map(str, tiny_runs["stage1"])]
    main(["report", *runs, "--labels", "unigrec", "c0.05", "relative", "cu1e-2", "cu1e-3", "--ids",
          str(tiny_runs["ids_yaml"]), str(tiny_runs["ids_dir"]), "--output", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    label = Path(tiny_runs["ids_yaml"]).stem
    for name in ("training_curves", "collision_rate", "head_tail", "popularity_deciles", "curriculum_sweep",
                 "uniformity_sweep",
                 "objective_weights_c0.05", "objective_weights_relative", "identifier_evolution_unigrec",
                 "codebook_pca_unigrec", "code_usage_unigrec", f"code_usage_{label}",
                 f"codebook_pca_{label}", f"purity_gain_{label}", "filter_ratios"):  # fmt: skip
        assert f"{name}.png" in names, f"{name}.png missing; wrote {names}"
        nonblank_png(out / f"{name}.png")
    sweep = pl.read_csv(out / "curriculum_sweep.csv")
    assert sweep["c"].to_list() == pytest.approx([0.05, math.log(2) / 4])  # relative: 1/2 at step 4 of 8
    metrics = json.loads((tiny_runs["sweep"][0] / "test_metrics.json").read_text())["metrics"]
    assert sweep["test/ndcg@5"][0] == pytest.approx(metrics["test/ndcg@5"])
    # Figure 4: each stage-1 run's lambda_CU and the collision rate of the IDs it wrote
    cu_sweep = pl.read_csv(out / "uniformity_sweep.csv")
    assert cu_sweep["lambda_cu"].to_list() == [1e-3, 1e-2] and cu_sweep["run"].to_list() == [
        "cu1e-3",
        "cu1e-2",
    ]
    tables = [SemanticIds.load(m.parent) for m in tiny_runs["cache"].glob("**/semantic_ids/*/meta.json")]
    for run, rate in zip(tiny_runs["stage1"][::-1], cu_sweep["collision_rate"].to_list(), strict=True):
        (written,) = [t for t in tables if t.meta.get("checkpoint", "").startswith(str(run))]
        assert rate == pytest.approx(written.statistics()["collision_rate"], abs=1e-6)
    last_validation = [read_scalars(run).filter(pl.col("tag") == "val/collision_rate")["value"][-1]
                       for run in tiny_runs["stage1"][::-1]]  # fmt: skip
    assert cu_sweep["collision_rate_end"].to_list() == pytest.approx(last_validation)
    ratios = pl.read_csv(out / "filter_ratios.csv")
    expected = F.filter_ratio_table({"x": SemanticIds.load(tiny_runs["ids_dir"])})
    assert ratios["layer_2"][0] == pytest.approx(expected["layer_2"][0])
    assert "skipped purity_gain_" in printed  # the artifact dir alone has no item frequencies
    assert printed.count("wrote ") == len(names)


def test_report_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="give run directories"):
        main(["report"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["report", str(tmp_path / "missing")])
    (tmp_path / "test_metrics.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(SystemExit, match="distinct --labels"):
        main(["report", str(tmp_path), "--labels", "a", "b"])
    assert not (tmp_path / "report").exists()  # nothing written before the error


# ------------------------------------------------------------------------------ notebooks
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs() -> None:
    import nbformat

    assert len(NOTEBOOKS) == 5
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_on_tiny_runs(
    path: Path,
    tiny_runs: dict[str, Any],
    stages: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbformat
    from nbclient import NotebookClient

    stage1_run = next(
        p for p in sorted((stages["tmp"] / "runs").glob("*/version_*")) if "sasrec" not in str(p)
    )
    env = {
        "GENREC_IDS": str(tiny_runs["ids_yaml"]),
        "GENREC_TOKENIZER_RUN": str(stage1_run),
        "GENREC_RUN_DIR": str(tiny_runs["unigrec"] if "unigrec" in path.stem else tiny_runs["sweep"][0]),
        "GENREC_RUN_DIRS": os.pathsep.join(map(str, [tiny_runs["unigrec"], *tiny_runs["sweep"]])),
        "GENREC_SWEEP_GLOB": str(tiny_runs["tmp"] / "runs" / "sweep" / "version_*"),
        # The tiny configs name the test-suite's HashEncoder (tests/conftest.py).
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    images = [
        o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert images, f"{path.name} displayed no figure"
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
