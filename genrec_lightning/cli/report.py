"""`genrec report`: the papers' figures for run directories and semantic-ID tables, as PNG files.

    genrec report runs/tiger_curriculum/version_0                      # one run -> <run>/report/
    genrec report runs/sweep/c1e-5 runs/sweep/c2e-5 --output sweep/    # several runs, compared
    genrec report --ids configs/rqvae.yaml                             # semantic-ID figures

Each figure is written only when its inputs exist (e.g. objective weights for a multi-target
run, identifier evolution for a UniGRec run), and the command lists what it wrote and skipped.
The figures and the `Report` writer are library code in `genrec_lightning.analysis`; this module
adds what needs a command line: the options, and the data config behind a tokenizer YAML.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from genrec_lightning.analysis import figures as F
from genrec_lightning.analysis.report import Report, report_runs, run_label
from genrec_lightning.analysis.runs import check_run_dir, load_codebooks
from genrec_lightning.cli.config_data import data_from_config, data_parser
from genrec_lightning.semantic_ids import SemanticIds


def load_ids(source: str) -> tuple[SemanticIds, torch.Tensor | None, Path]:
    """IDs, item frequencies (None if unknown) and artifact dir of a tokenizer YAML or an artifact dir."""
    from genrec_lightning.pipeline import semantic_ids_dir

    path = Path(source)
    if path.is_dir():
        return SemanticIds.load(path), None, path
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise FileNotFoundError(
            f"--ids {source}: expected a semantic-ID artifact directory or tokenizer YAML"
        )
    _, data = data_from_config(data_parser("genrec report", ""), ["--config", source])
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
    """The options of `genrec report` (argparse: run directories are positional, no config file)."""
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
    """Write the figures and tables of `argv`'s runs and ID tables; return the files written."""
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


__all__ = ["load_ids", "main", "parser", "report_ids"]
