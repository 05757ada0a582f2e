"""Run experiment configs x seeds with `genrec fit` and tabulate test metrics as mean ± std.

Every row is a name and one or more configs layered in order (a shared preset can be appended to
all rows). Each (row, seed) trains in its own log directory, `<runs>/<row>/seed<S>/`, and leaves a
`result.json` (test metrics, wall time, command); finished runs are skipped, so an interrupted
sweep resumes where it stopped and rows can be added later. The report is Markdown: the main table
(Hit/NDCG@5/10 = the token-weighting paper's Tables 3-5), head/tail (Figure 3) and prefix match
(Table 6), each mean ± sample standard deviation over the seeds that finished. Text below the
line `<!-- notes: ... -->` of an existing report survives a rewrite, so analysis can live there.

    python benchmarks/experiments.py \\
        --row "TIGER=configs/tiger.yaml" --row "+Curriculum=configs/tiger_curriculum.yaml" \\
        --preset configs/presets/cpu.yaml --seeds 0 1 2 --runs runs/experiments/ml100k \\
        --report docs/results/ml100k.md
    python benchmarks/experiments.py --runs runs/experiments/ml100k --report docs/results/ml100k.md \\
        --report-only      # re-tabulate what has finished

`--jobs` runs that many fits at once and `--threads` caps each one's CPU threads (e.g. two 1-thread
runs on a 2-core machine); on a GPU machine several small runs can share the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: (column title, metric key) of the main table; Hit@K = Recall@K with one target per user.
#: Text from this line on in an existing report is kept when the tables are rewritten (analysis).
NOTES_MARKER = "<!-- notes: kept when the tables are regenerated -->"

MAIN_COLUMNS = (("Hit@5", "test/recall@5"), ("NDCG@5", "test/ndcg@5"),
                ("Hit@10", "test/recall@10"), ("NDCG@10", "test/ndcg@10"))  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    configs: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_") or "row"


def parse_row(spec: str) -> Row:
    """`NAME=cfg1.yaml[+cfg2.yaml...]` -> Row."""
    name, sep, configs = spec.partition("=")
    if not sep or not name.strip() or not configs.strip():
        raise argparse.ArgumentTypeError(f"row {spec!r} is not NAME=config.yaml[+other.yaml]")
    files = tuple(c.strip() for c in configs.split("+") if c.strip())
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"row {name!r}: config file(s) not found: {missing}")
    return Row(name.strip(), files)


def run_dir(runs: Path, row: Row, seed: int) -> Path:
    return runs / row.slug / f"seed{seed}"


def fit_command(row: Row, seed: int, runs: Path, preset: Sequence[str], extra: Sequence[str]) -> list[str]:
    genrec = shutil.which("genrec", path=str(Path(sys.executable).parent)) or "genrec"
    cmd = [genrec, "fit"]
    for config in (*row.configs, *preset):
        cmd += ["--config", config]
    cmd += [
        "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.logger.init_args.name", row.slug,
        "--trainer.logger.init_args.version", f"seed{seed}",
    ]  # fmt: skip
    return cmd + list(extra)


def run_one(
    row: Row, seed: int, runs: Path, preset: Sequence[str], extra: Sequence[str], threads: int
) -> dict:
    """Fit (and test) one row with one seed; returns its result record (also saved as result.json)."""
    directory = run_dir(runs, row, seed)
    result_file = directory / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if directory.exists():  # an unfinished earlier attempt: start it again from scratch
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    cmd = fit_command(row, seed, runs, preset, extra)
    env = dict(os.environ)
    if threads > 0:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[{row.name} seed {seed}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(directory / "fit.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - start
    metrics_file = directory / "test_metrics.json"
    if proc.returncode != 0 or not metrics_file.is_file():
        log_file = directory / "fit.log"
        raise RuntimeError(f"{row.name} seed {seed} failed (exit {proc.returncode}); see {log_file}")
    record = {
        "row": row.name,
        "configs": list(row.configs) + list(preset),
        "seed": seed,
        "wall_s": round(wall, 1),
        "threads": threads,
        "command": " ".join(["genrec", *cmd[1:]]),
        "metrics": json.loads(metrics_file.read_text())["metrics"],
    }
    result_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{row.name} seed {seed}] done in {wall:.0f} s: NDCG@10 {record['metrics'].get('test/ndcg@10')}")
    return record


def load_results(runs: Path) -> dict[str, list[dict]]:
    """Finished records by row name, in the order rows were first seen (sorted by directory)."""
    out: dict[str, list[dict]] = {}
    for file in sorted(runs.glob("*/seed*/result.json")):
        record = json.loads(file.read_text())
        out.setdefault(record["row"], []).append(record)
    return out


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def table(rows: dict[str, list[dict]], columns: Sequence[tuple[str, str]], with_runs: bool = False) -> str:
    head = ["Model", *(title for title, _ in columns)] + (["seeds", "wall (min/run)"] if with_runs else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, records in rows.items():
        cells = [name]
        for _, key in columns:
            cells.append(mean_std([r["metrics"][key] for r in records if key in r["metrics"]]))
        if with_runs:
            seeds = ", ".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
            cells += [seeds, f"{statistics.fmean(r['wall_s'] for r in records) / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(rows: dict[str, list[dict]]) -> str:
    seeds = sorted({r["seed"] for records in rows.values() for r in records})
    lines = ["| Model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
    for name, records in rows.items():
        by_seed = {r["seed"]: r["metrics"] for r in records}
        cells = [
            f"{by_seed[s]['test/recall@10']:.4f} / {by_seed[s]['test/ndcg@10']:.4f}" if s in by_seed else "–"
            for s in seeds
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative_table(rows: dict[str, list[dict]], baseline: str) -> str:
    """Change of each row's mean against the baseline row's mean, in %."""
    if baseline not in rows:
        return ""
    base = {key: statistics.fmean(r["metrics"][key] for r in rows[baseline]) for _, key in MAIN_COLUMNS}
    lines = ["| Model | " + " | ".join(t for t, _ in MAIN_COLUMNS) + " |"]
    lines.append("|" + "---|" * (len(MAIN_COLUMNS) + 1))
    for name, records in rows.items():
        if name == baseline:
            continue
        cells = [name]
        for _, key in MAIN_COLUMNS:
            mean = statistics.fmean(r["metrics"][key] for r in records)
            cells.append(f"{100 * (mean / base[key] - 1):+.1f}%" if base[key] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def threads_used(rows: dict[str, list[dict]]) -> str:
    used = sorted({r.get("threads", 0) for records in rows.values() for r in records})
    return ", ".join("torch default" if t == 0 else str(t) for t in used) or "–"


def report(rows: dict[str, list[dict]], title: str, baseline: str | None) -> str:
    levels = sorted({int(m.group(1)) for recs in rows.values() for r in recs
                     for k in r["metrics"] if (m := re.match(r"test/prefix(\d+)/", k))})  # fmt: skip
    group_cols = [(f"{g} {t}", f"test/{g}/{k}") for g in ("head", "tail") for t, k in
                  (("Hit@10", "recall@10"), ("NDCG@10", "ndcg@10"))]  # fmt: skip
    prefix_cols = [(f"prefix-{lv} NDCG@5", f"test/prefix{lv}/ndcg@5") for lv in levels]
    extra_cols = [("coverage@10", "test/coverage@10"), ("Hit@20", "test/recall@20")]
    extra_cols += [("NDCG@20", "test/ndcg@20"), ("mean popularity of top-10", "test/avg_popularity@10")]
    parts = [
        f"# {title}",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; CPU threads per run: {threads_used(rows)}. "
        "Values are mean ± sample standard deviation over the seeds listed; wall time includes data "
        "loading, validation and the final test.",
        "",
        "## Main table (Hit@K = Recall@K: one held-out item per user)",
        "",
        table(rows, MAIN_COLUMNS, with_runs=True),
    ]
    if baseline and baseline in rows and len(rows) > 1:
        parts += ["", f"### Relative to {baseline} (means)", "", relative_table(rows, baseline)]
    parts += ["", "## Head / tail items (test targets split by training popularity)", "",
              table(rows, group_cols)]  # fmt: skip
    if prefix_cols:
        title_line = "## Prefix match (a hit when the first k ID tokens match)"
        parts += ["", title_line, "", table(rows, prefix_cols)]
    parts += ["", "## Other cutoffs and coverage", "", table(rows, extra_cols), ""]
    parts += ["## Per seed (Hit@10 / NDCG@10)", "", per_seed_table(rows), ""]
    parts += ["## Commands", ""]
    for name, records in rows.items():
        first = min(records, key=lambda r: r["seed"])
        command = first["command"].replace(f"{Path.cwd()}/", "")  # paths relative to the checkout
        parts.append(f"- {name}: `{command}` (seeds {sorted(r['seed'] for r in records)})")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--row", action="append", type=parse_row, default=[], help="NAME=a.yaml[+b.yaml]")
    parser.add_argument("--preset", action="append", default=[], help="config appended to every row")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=Path("runs/experiments"), help="log root of the sweep")
    parser.add_argument("--report", type=Path, help="Markdown file to (re)write with the tables")
    parser.add_argument("--title", default="Experiment results")
    parser.add_argument("--baseline", default=None, help="row the relative table compares against")
    parser.add_argument("--jobs", type=int, default=1, help="fits running at once")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per fit (0: torch default)")
    parser.add_argument("--report-only", action="store_true", help="only tabulate finished runs")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra `genrec fit` arguments")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    for preset in args.preset:
        if not Path(preset).is_file():
            parser.error(f"preset {preset!r} not found")
    if not args.report_only:
        if not args.row:
            parser.error("give at least one --row NAME=config.yaml (or --report-only)")
        jobs = [(row, seed) for seed in args.seeds for row in args.row]  # every row gets seed 0 first
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [
                pool.submit(run_one, row, seed, args.runs, args.preset, extra, args.threads)
                for row, seed in jobs
            ]
            for future in futures:
                try:
                    future.result()
                except RuntimeError as err:
                    failures.append(str(err))
                    print(err, file=sys.stderr)
        if failures:
            print(f"{len(failures)} run(s) failed", file=sys.stderr)
    rows = load_results(args.runs)
    if args.row:  # the order given on the command line, finished rows only
        rows = {r.name: rows[r.name] for r in args.row if r.name in rows} | rows
    text = report(rows, args.title, args.baseline or (args.row[0].name if args.row else None))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        old = args.report.read_text() if args.report.is_file() else ""
        if NOTES_MARKER in old:
            text += "\n" + old[old.index(NOTES_MARKER) :]
        args.report.write_text(text)
        print(f"wrote {args.report}")
    else:
        print(text)


if __name__ == "__main__":
    main()
