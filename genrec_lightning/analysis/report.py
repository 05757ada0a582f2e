"""`genrec report`: the papers' figures for run directories and semantic-ID tables, as PNG files.

    genrec report runs/tiger_curriculum/version_0                      # one run -> <run>/report/
    genrec report runs/sweep/c1e-5 runs/sweep/c2e-5 --output sweep/    # several runs, compared
    genrec report --ids configs/rqvae.yaml                             # semantic-ID figures

Each figure is written only when its inputs exist (e.g. objective weights for a multi-target
run, identifier evolution for a UniGRec run), and the command lists what it wrote and skipped.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch
from matplotlib.figure import Figure

from genrec_lightning.analysis import figures as F
from genrec_lightning.analysis.runs import (
    check_run_dir,
    config_value,
    load_codebooks,
    load_state_tensor,
    read_config,
    read_scalars,
    read_test_metrics,
)
from genrec_lightning.artifacts import atomic_file
from genrec_lightning.semantic_ids import SemanticIds

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
            table = load_state_tensor(run_dir, "item_id_table")
            codes = None if table is None else table[:, : books.shape[0]]
            report.add(
                f"codebook_pca{suffix}", lambda b=books, c=codes, n=label: F.plot_codebook_pca(b, c, n)
            )
            if codes is not None:
                sizes = [books.shape[1]] * books.shape[0]
                report.add(
                    f"code_usage{suffix}", lambda c=codes, s=sizes, n=label: F.plot_code_usage(c, s, n)
                )


def load_ids(source: str) -> tuple[SemanticIds, torch.Tensor | None, Path]:
    """IDs, item frequencies (None if unknown) and artifact dir of a tokenizer YAML or an artifact dir."""
    from genrec_lightning.cli import _config_section, _data_parser, _sequence_data
    from genrec_lightning.pipeline import semantic_ids_dir

    path = Path(source)
    if path.is_dir():
        return SemanticIds.load(path), None, path
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise FileNotFoundError(
            f"--ids {source}: expected a semantic-ID artifact directory or tokenizer YAML"
        )
    parser = _data_parser("genrec report", "")
    data = _sequence_data(
        parser.instantiate_classes(parser.parse_args(_config_section(["--config", source]))).data
    )
    directory = semantic_ids_dir(path, data)
    return (
        SemanticIds.load(directory, expect=data.semantic_ids_expectation()),
        data.item_frequencies(),
        directory,
    )


def report_ids(report: Report, sources: Sequence[str]) -> None:
    """Usage and PCA per table, Table 1 over all tables, Figure 1 where item frequencies are known."""
    tables: dict[str, SemanticIds] = {}
    for source in sources:
        ids, frequencies, directory = load_ids(source)
        label = Path(source).stem if Path(source).is_file() else directory.name
        tables[label] = ids
        raw, sizes = ids.raw_codes, ids.raw_codebook_sizes
        report.add(f"code_usage_{label}", lambda r=raw, s=sizes, n=label: F.plot_code_usage(r, s, n))
        books = load_codebooks(directory)
        if books is None and (checkpoint := ids.meta.get("checkpoint")) and Path(checkpoint).is_file():
            books = load_codebooks(checkpoint)
        if books is not None:
            report.add(f"codebook_pca_{label}", lambda b=books, r=raw, n=label: F.plot_codebook_pca(b, r, n))
        if frequencies is None:
            report.skipped.append(f"purity_gain_{label}: item frequencies unknown (pass the tokenizer YAML)")
        else:
            report.add(
                f"purity_gain_{label}", lambda i=ids, f=frequencies, n=label: F.plot_purity_gain(i, f, n)
            )
    report.table("filter_ratios", F.filter_ratio_table(tables))
    report.add("filter_ratios", lambda: F.plot_filter_ratios(tables))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genrec report",
        description="Write the papers' figures (PNG) and tables (CSV) for runs and semantic-ID tables.",
    )
    p.add_argument("runs", nargs="*", help="run directories (logger versions, e.g. runs/tiger/version_0)")
    p.add_argument("--ids", nargs="*", default=[], help="semantic-ID artifact dirs or tokenizer YAMLs")
    p.add_argument("--labels", nargs="*", default=None, help="one label per run (default <name>/<version>)")
    p.add_argument("--output", default=None, help="output folder (default <run>/report, or ./report)")
    p.add_argument("--k", type=int, default=10, help="cut-off of the head/tail figure")
    return p


def main(argv: Sequence[str]) -> list[Path]:
    args = parser().parse_args(list(argv))
    if not args.runs and not args.ids:
        raise SystemExit("genrec report: give run directories and/or --ids (see genrec report --help)")
    try:
        run_dirs = [check_run_dir(r) for r in args.runs]
    except FileNotFoundError as err:
        raise SystemExit(f"genrec report: {err}") from None
    labels = args.labels or [run_label(d) for d in run_dirs]
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise SystemExit(f"genrec report: need {len(run_dirs)} distinct --labels, got {labels}")
    default = run_dirs[0] / "report" if len(run_dirs) == 1 and not args.ids else Path("report")
    report = Report(Path(args.output) if args.output else default)
    if run_dirs:
        report_runs(report, run_dirs, labels, k=args.k)
    if args.ids:
        report_ids(report, args.ids)
    for path in report.written:
        print(f"wrote {path}")
    for reason in report.skipped:
        print(f"skipped {reason}")
    return report.written


__all__ = ["Report", "load_ids", "main", "parser", "report_ids", "report_runs", "run_label"]
