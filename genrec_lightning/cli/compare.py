"""`genrec compare`: is run A better than run B on the same test users, and by how much?

    genrec compare runs/curriculum/seed0 runs/curriculum/seed1 --against runs/tiger/seed0 runs/tiger/seed1
    genrec compare A --against B --metric ndcg@10 recall@20 --json

Each side is one or more runs (seeds) that wrote `test_users.parquet`; the paired comparison
itself is library code (`genrec_lightning.analysis.compare`), this module its options and its
table or JSON output.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genrec_lightning.analysis.compare import DATA_KEYS, DEFAULT_METRICS, Side, compare_sides, load_side
from genrec_lightning.analysis.significance import PairedComparison
from genrec_lightning.errors import ConfigError


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.1f}%"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def format_table(a: Side, b: Side, results: dict[str, PairedComparison]) -> str:
    """The comparison as an aligned text table with a legend (what `genrec compare` prints)."""
    first = next(iter(results.values()))
    level = f"{100 * first.confidence:g}%"
    head = ["metric", "A", "B", "A-B", "A/B-1", f"{level} CI of A/B-1", "t-test p", "Wilcoxon p", "MDE"]
    rows = []
    for metric, r in results.items():
        star = "*" if r.significant else ""
        ci = f"[{_percent(r.ci_low)}, {_percent(r.ci_high)}]"
        rows.append([metric, f"{r.mean_a:.4f}", f"{r.mean_b:.4f}", f"{r.difference:+.4f}",
                     _percent(r.relative) + star, ci, _p(r.t_pvalue), _p(r.wilcoxon_pvalue),
                     _percent(r.min_detectable_relative).lstrip("+")])  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        f"A: {', '.join(str(p) for p in a.runs)} ({len(a.runs)} run{'s' * (len(a.runs) > 1)})",
        f"B: {', '.join(str(p) for p in b.runs)} ({len(b.runs)} run{'s' * (len(b.runs) > 1)})",
        f"{first.n} test users, paired; each user's metric averaged over the runs of its side",
        "",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows),
        "",
        f"* p < {first.alpha:g} (two-sided paired t-test over users). CI: percentile bootstrap over users. "
        f"MDE: smallest relative difference these users detect with {100 * first.power:g}% power.",
    ]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN (an undefined relative difference) as JSON null rather than the non-standard NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def as_json(
    a: Side, b: Side, results: dict[str, PairedComparison], settings: dict[str, Any]
) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (what `genrec compare --json` prints)."""
    return {
        "a": [str(p) for p in a.runs],
        "b": [str(p) for p in b.runs],
        "users": a.frame.height,
        "data": {k: a.identity.get(k) for k in DATA_KEYS},
        "settings": settings,
        "metrics": {m: {k: _finite(v) for k, v in r.to_dict().items()} for m, r in results.items()},
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Compare the runs of `argv` and print the table (or JSON); user errors raise GenRecError."""
    parser = argparse.ArgumentParser(
        prog="genrec compare",
        description="Paired comparison of runs A against runs B on the same test users: means, "
        "difference, paired t-test and Wilcoxon p-values, bootstrap CI of the relative difference. "
        "Each side may hold several runs (seeds); a user's metric is averaged over them.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories (or test_users.parquet files) of A"
    )
    parser.add_argument("--against", nargs="+", type=Path, required=True, help="run directories of B")
    default = " ".join(DEFAULT_METRICS)
    parser.add_argument("--metric", nargs="+", default=None, help=f"metrics (default: {default})")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the users")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the bootstrap interval")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the stars")
    parser.add_argument("--power", type=float, default=0.8, help="power of the minimum detectable difference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be >= 1, got {args.resamples}")
    for name in ("confidence", "alpha", "power"):
        if not 0 < getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be between 0 and 1, got {getattr(args, name)}")
    a = load_side(args.runs, args.metric)
    metrics = [c for c in a.frame.columns if "@" in c]
    b = load_side(args.against, metrics)
    settings = {k: getattr(args, k) for k in ("resamples", "confidence", "alpha", "power", "seed")}
    results = compare_sides(a, b, metrics, **settings)
    if args.json:
        print(json.dumps(as_json(a, b, results, settings), indent=2))
    else:
        print(format_table(a, b, results))


__all__ = ["as_json", "format_table", "main"]
