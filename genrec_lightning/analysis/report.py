"""Figures of finished runs written as files: `Report` (PNG/CSV, atomically) and `report_runs`.

The papers' figures of one or several run directories: training curves, objective weights,
collision rate, the curriculum and lambda_CU sweeps, identifier evolution, head/tail and
popularity-decile test metrics. Each figure is written only when its inputs exist and the
`Report` lists what it wrote and skipped. `genrec report` (`genrec_lightning.cli.report`) is the
command line over this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from genrec_lightning.analysis import figures as F
from genrec_lightning.analysis.runs import (
    config_value,
    load_codebooks,
    load_id_table,
    read_config,
    read_scalars,
    read_test_metrics,
)
from genrec_lightning.artifacts import atomic_file

log = logging.getLogger(__name__)

CURVE_TAGS = ("train/loss", "val/ndcg@10", "val/recall@10", "train/rec_loss", "train/recon_loss")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def run_label(run_dir: Path) -> str:
    """`<name>/<version>`, e.g. `tiger/version_0`, so labels of several runs stay distinct."""
    return f"{run_dir.parent.name}/{run_dir.name}"


class Report:
    """Collects figures and writes each one atomically as `<output>/<name>.png`."""

    def __init__(self, output: Path, dpi: int = 110) -> None:
        self.output, self.dpi = output, dpi
        self.written: list[Path] = []
        self.skipped: list[str] = []

    def add(self, name: str, make: Callable[[], Figure]) -> None:
        try:
            fig = make()
        except ValueError as err:  # the inputs this figure needs are not in these runs
            self.skipped.append(f"{name}: {err}")
            return
        path = self.output / f"{_slug(name)}.png"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=self.dpi)
        self.written.append(path)

    def table(self, name: str, frame: pl.DataFrame) -> None:
        path = self.output / f"{_slug(name)}.csv"
        with atomic_file(path) as tmp:
            frame.write_csv(tmp)
        self.written.append(path)


def report_runs(report: Report, run_dirs: Sequence[Path], labels: Sequence[str], k: int = 10) -> None:
    """Training curves, objective weights, collision rate (UniGRec Figure 3), the lambda_CU sweep
    (Figure 4), identifier evolution, test-metric figures."""
    scalars = {label: read_scalars(d) for label, d in zip(labels, run_dirs, strict=True)}
    metrics = {label: read_test_metrics(d) for label, d in zip(labels, run_dirs, strict=True)}
    configs = {label: read_config(d) for label, d in zip(labels, run_dirs, strict=True)}
    report.add("training_curves", lambda: F.plot_curves(scalars, CURVE_TAGS, "Training and validation"))
    report.add("collision_rate", lambda: F.plot_collision_rate(scalars))
    tested = {label: m for label, m in metrics.items() if m}
    if tested:
        report.add("head_tail", lambda: F.plot_head_tail(tested, k=k))
        report.add("popularity_deciles", lambda: F.plot_popularity_deciles(tested))
        report.table("test_metrics", pl.DataFrame([{"run": label, **m} for label, m in tested.items()]))
    else:
        report.skipped.append("test figures: no run has test_metrics.json (run `genrec test`)")
    decays = {F.curriculum_rate(configs[label], scalars[label]) for label in labels} - {None}
    if len(decays) > 1:
        runs = {label: (configs[label], metrics[label]) for label in labels}
        sweep = F.curriculum_sweep(runs, scalars=scalars)
        report.table("curriculum_sweep", sweep)
        report.add("curriculum_sweep", lambda: F.plot_curriculum_sweep(sweep))
    weights = {config_value(c, F.UNIFORMITY_KEY) for c in configs.values()} - {None}
    if len(weights) > 1:
        cu_sweep = F.uniformity_sweep({label: (configs[label], scalars[label]) for label in labels})
        report.table("uniformity_sweep", cu_sweep)
        report.add("uniformity_sweep", lambda: F.plot_uniformity_sweep(cu_sweep))
    for label, run_dir in zip(labels, run_dirs, strict=True):
        suffix = "" if len(labels) == 1 else f"_{label}"
        run_scalars = scalars[label]
        if F.objective_names(run_scalars):
            report.add(f"objective_weights{suffix}", lambda s=run_scalars: F.plot_objective_weights(s))
        if run_scalars.filter(pl.col("tag").str.starts_with("ids/changed_since_start")).height:
            rates, shares = F.evolution_from_scalars(run_scalars)
            report.add(
                f"identifier_evolution{suffix}", lambda r=rates, s=shares: F.plot_identifier_evolution(r, s)
            )
        books = load_codebooks(run_dir)
        if books is not None:
            table = load_id_table(run_dir)
            codes = None if table is None else table[:, : books.shape[0]]
            report.add(
                f"codebook_pca{suffix}", lambda b=books, c=codes, n=label: F.plot_codebook_pca(b, c, n)
            )
            if codes is not None:
                sizes = [books.shape[1]] * books.shape[0]
                report.add(
                    f"code_usage{suffix}", lambda c=codes, s=sizes, n=label: F.plot_code_usage(c, s, n)
                )


__all__ = ["Report", "report_runs", "run_label"]
