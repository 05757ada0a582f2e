"""Run experiment configs x seeds with `genrec fit` and tabulate test metrics as mean ± std.

Every row is a name and one or more configs layered in order (a shared preset can be appended to
all rows). Each (row, seed) trains in its own log directory, `<runs>/<row>/seed<S>/`, and leaves a
`result.json` (test metrics, wall time, command); finished runs are skipped, and a run that was
stopped part-way (killed, preempted, the end of a session) continues from its `last.ckpt` with
the same command (the run layer's exact resume), so an interrupted sweep resumes where it
stopped and rows can be added later. The report is Markdown: the main table
(Hit/NDCG@5/10 = the token-weighting paper's Tables 3-5), head/tail (Figure 3) and prefix match
(Table 6), each mean ± sample standard deviation over the seeds that finished. Text below the
line `<!-- notes: ... -->` of an existing report survives a rewrite, so analysis can live there.

Every row is also compared with the baseline row user by user (`genrec compare`): each test
user's metric is averaged over the row's seeds, and the tables give the relative difference
with its bootstrap 95% CI and a `*` where the paired t-test over users has p < 0.05, as the
token-weighting paper marks its Table 3. A finished run from before per-user files existed is
tested again from its checkpoint to write its `test_users.parquet` (not with --report-only).

A sweep longer than one working session survives with `--archive DIR`: every finished run also
writes its validation curve (`curve.csv`, validation metrics per epoch from its event files) and
copies what the report needs (result.json, test_users.parquet, curve.csv, config.yaml: kilobytes,
no checkpoints) to `DIR/<row>/seed<S>/`, which can be committed. A run found in the archive is
not trained again, and the report reads the archive as well as `--runs`, so the tables build up
over sessions on machines that keep nothing but the repository.

    python benchmarks/experiments.py \\
        --row "TIGER=configs/tiger.yaml" --row "+Curriculum=configs/tiger_curriculum.yaml" \\
        --preset configs/presets/cpu.yaml --seeds 0 1 2 --runs runs/experiments/ml100k \\
        --report docs/results/ml100k.md
    python benchmarks/experiments.py --runs runs/experiments/ml100k --report docs/results/ml100k.md \\
        --report-only      # re-tabulate what has finished

An RQ-VAE build is bit-reproducible only on one machine: another machine (even a VM of the same
type, with one thread) trains other IDs of the same shape. Rows compared across sessions must
train on one artifact, so `--ids DIR` pins it: every fit gets
`--data.init_args.semantic_ids_from DIR` (a committed semantic-ID artifact: codes.safetensors and
meta.json), each result records the codes' SHA-256, a finished or archived run that trained on
other IDs is refused, and the report names the IDs of every row.

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

import numpy as np
import polars as pl

from genrec_lightning.analysis.compare import Side, compare_sides, load_side
from genrec_lightning.analysis.runs import read_scalars
from genrec_lightning.analysis.significance import PairedComparison
from genrec_lightning.artifacts import read_meta, sha256_of
from genrec_lightning.callbacks.test_users import FILE_NAME as USERS_FILE
from genrec_lightning.errors import GenRecError
from genrec_lightning.semantic_ids import CODES_FILE

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


#: What an archived run keeps: enough to tabulate, compare user by user and draw its curve.
ARCHIVED = ("result.json", USERS_FILE, "curve.csv", "config.yaml", "test_metrics.json")
CURVE_FILE = "curve.csv"


#: The fit option `--ids` appends; a record's command naming it tells which artifact it trained on.
IDS_OPTION = "--data.init_args.semantic_ids_from"


def pinned_ids(directory: Path) -> dict[str, str]:
    """`{"path", "sha256"}` of a semantic-ID artifact to pin, checked before any run starts."""
    meta = read_meta(directory)
    codes = directory / CODES_FILE
    if meta is None or not codes.is_file():
        raise GenRecError(
            f"--ids {directory}: not a semantic-ID artifact (needs meta.json and {CODES_FILE}); "
            "copy one from data/cache/<dataset>/<hash>/semantic_ids/<key>/"
        )
    if meta.get("sha256") != sha256_of(codes):
        raise GenRecError(f"--ids {directory}: {CODES_FILE} does not match the sha256 in its meta.json")
    return {"path": str(directory), "sha256": meta["sha256"]}


def record_ids(record: dict) -> tuple[str, str] | None:
    """(codes SHA-256, artifact path) a finished run trained on: recorded at run time, or read from
    the artifact directory its command names; None when neither tells (IDs built from a YAML)."""
    if "semantic_ids" in record:
        return record["semantic_ids"]["sha256"], record["semantic_ids"]["path"]
    words = record.get("command", "").split()
    if IDS_OPTION not in words[:-1]:
        return None
    path = words[words.index(IDS_OPTION) + 1]
    meta = read_meta(Path(path))
    return (meta["sha256"], path) if meta and "sha256" in meta else None


def check_ids(record: dict, ids: dict[str, str] | None) -> dict:
    """`record`, refused when `--ids` pins other IDs than the ones it trained on."""
    if ids is not None and (record_ids(record) or ("",))[0] != ids["sha256"]:
        where = record.get("dir") or f"{record['row']} seed {record['seed']}"
        raise RuntimeError(
            f"{record['row']} seed {record['seed']} trained on other semantic IDs than --ids {ids['path']}; "
            f"move {where} out of the runs and the archive to train it again on the pinned IDs"
        )
    return record


def run_dir(runs: Path, row: Row, seed: int) -> Path:
    return runs / row.slug / f"seed{seed}"


def write_curve(directory: Path) -> None:
    """`curve.csv` of a run: its validation metrics (columns `val/...`) per validation, in step
    order, with the epoch each was logged in (1-based); nothing if the run has no event files."""
    if not any(directory.glob("events.out.tfevents.*")):
        return
    scalars = read_scalars(directory)
    val = scalars.filter(pl.col("tag").str.starts_with("val/"))
    if val.is_empty():
        return
    wide = val.pivot(on="tag", index="step", values="value").sort("step")
    epochs = scalars.filter(pl.col("tag") == "epoch").select(
        "step", (pl.col("value").cast(pl.Int64) + 1).alias("epoch")
    )
    wide = wide.join(epochs, on="step", how="left")
    if wide["epoch"].null_count():  # a logger without the epoch scalar: one validation per epoch
        wide = wide.with_columns(epoch=pl.int_range(1, wide.height + 1, dtype=pl.Int64))
    tmp = directory / f".{CURVE_FILE}.partial"
    wide.select("epoch", "step", *sorted(c for c in wide.columns if c.startswith("val/"))).write_csv(tmp)
    os.replace(tmp, directory / CURVE_FILE)


def archive_run(directory: Path, archive: Path) -> Path:
    """Copy a finished run's small files to `archive/<row>/seed<S>/`, replacing an older copy only
    once the new one is complete (a kill part-way leaves the previous archive intact)."""
    if not (directory / CURVE_FILE).is_file():
        write_curve(directory)
    target = archive / directory.parent.name / directory.name
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in ARCHIVED:
        if (directory / name).is_file():
            shutil.copy2(directory / name, partial / name)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def genrec_executable() -> str:
    """The `genrec` of this interpreter's environment (scripts run with .venv/bin/python)."""
    return shutil.which("genrec", path=str(Path(sys.executable).parent)) or "genrec"


def fit_command(row: Row, seed: int, runs: Path, preset: Sequence[str], extra: Sequence[str]) -> list[str]:
    cmd = [genrec_executable(), "fit"]
    for config in (*row.configs, *preset):
        cmd += ["--config", config]
    cmd += [
        "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.logger.init_args.name", row.slug,
        "--trainer.logger.init_args.version", f"seed{seed}",
    ]  # fmt: skip
    return cmd + list(extra)


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


def write_test_users(directory: Path, threads: int) -> None:
    """Write the per-user file of a run finished before such files existed: `genrec test` of the
    checkpoint its fit tested, logging into the run's own directory (its config.yaml is kept)."""
    if (directory / USERS_FILE).is_file():
        return
    metrics = directory / "test_metrics.json"
    tested = json.loads(metrics.read_text()).get("checkpoint", "") if metrics.is_file() else ""
    config = directory / "config.yaml"
    if not tested or not Path(tested).is_file() or not config.is_file():
        print(f"{directory}: no config.yaml or tested checkpoint, so no {USERS_FILE}", file=sys.stderr)
        return
    genrec = genrec_executable()
    logger = "--trainer.logger.init_args."  # into the run's own directory, whatever its config says
    cmd = [genrec, "test", "--config", str(config), "--ckpt_path", tested,
           f"{logger}save_dir", str(directory.parent.parent), f"{logger}name", directory.parent.name,
           f"{logger}version", directory.name]  # fmt: skip
    print(f"[{directory}] writing {USERS_FILE}: {' '.join(cmd)}", flush=True)
    with open(directory / "test_users.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads), check=False)
    if proc.returncode != 0 or not (directory / USERS_FILE).is_file():
        log_file = directory / "test_users.log"
        raise RuntimeError(f"testing {directory} again failed (exit {proc.returncode}); see {log_file}")


def run_one(
    row: Row,
    seed: int,
    runs: Path,
    preset: Sequence[str],
    extra: Sequence[str],
    threads: int,
    archive: Path | None = None,
    ids: dict[str, str] | None = None,
) -> dict:
    """Fit (and test) one row with one seed; returns its result record (also saved as result.json).

    With an archive, a run already there is done, and a run finished here is archived. With pinned
    `ids` (`pinned_ids`), the fit trains on them and a finished run that did not is refused."""
    directory = run_dir(runs, row, seed)
    archived = run_dir(archive, row, seed) / "result.json" if archive else None
    if archived is not None and archived.is_file():
        return check_ids(json.loads(archived.read_text()) | {"dir": str(archived.parent)}, ids)
    result_file = directory / "result.json"
    if result_file.is_file():
        check_ids(json.loads(result_file.read_text()) | {"dir": str(directory)}, ids)
        write_test_users(directory, threads)
        if archive is not None:
            archive_run(directory, archive)
        return json.loads(result_file.read_text())
    if ids is not None:
        extra = [*extra, IDS_OPTION, ids["path"]]
    cmd = fit_command(row, seed, runs, preset, extra)
    last = directory / "checkpoints" / "last.ckpt"
    resumed = last.is_file()
    if resumed:  # stopped part-way: continue that run exactly where its last checkpoint is
        cmd += ["--ckpt_path", str(last)]
    elif directory.exists():  # an attempt that never reached a checkpoint: start again
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    env = thread_env(threads)
    print(f"[{row.name} seed {seed}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(directory / "fit.log", "a" if resumed else "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - start
    metrics_file = directory / "test_metrics.json"
    if proc.returncode != 0 or not metrics_file.is_file():
        log_file = directory / "fit.log"
        fix = f"; to start it over, delete {directory}" if resumed else ""
        raise RuntimeError(f"{row.name} seed {seed} failed (exit {proc.returncode}); see {log_file}{fix}")
    record = {
        "row": row.name,
        "configs": list(row.configs) + list(preset),
        "seed": seed,
        "wall_s": round(wall, 1),  # of the last attempt only when resumed
        "resumed": resumed,
        "threads": threads,
        "command": " ".join(["genrec", *fit_command(row, seed, runs, preset, extra)[1:]]),
        "metrics": json.loads(metrics_file.read_text())["metrics"],
    }
    if ids is not None:
        record["semantic_ids"] = ids
    result_file.write_text(json.dumps(record, indent=2) + "\n")
    write_curve(directory)
    if archive is not None:
        archive_run(directory, archive)
    print(f"[{row.name} seed {seed}] done in {wall:.0f} s: NDCG@10 {record['metrics'].get('test/ndcg@10')}")
    return record


def load_results(*roots: Path | None) -> dict[str, list[dict]]:
    """Finished records by row name, in the order rows were first seen (sorted by directory).

    Several roots (a sweep's log root and its archive) are merged; a (row, seed) found in more
    than one keeps the first root's record."""
    out: dict[str, list[dict]] = {}
    seen: set[tuple[str, int]] = set()
    for root in roots:
        if root is None:
            continue
        for file in sorted(root.glob("*/seed*/result.json")):
            record = json.loads(file.read_text())
            if (record["row"], record["seed"]) in seen:
                continue
            seen.add((record["row"], record["seed"]))
            record["dir"] = str(file.parent)  # not stored: the sweep may be moved
            out.setdefault(record["row"], []).append(record)
    for records in out.values():
        records.sort(key=lambda r: r["seed"])
    return out


def curve_table(rows: dict[str, list[dict]], metric: str = "val/ndcg@10") -> str:
    """Validation `metric` per epoch, mean over the seeds of each row that have a curve.csv,
    with the best epoch of that mean; empty when no run has a curve."""
    curves: dict[str, dict[int, float]] = {}
    for name, records in rows.items():
        frames = [pl.read_csv(f) for r in records if (f := Path(r.get("dir", "")) / CURVE_FILE).is_file()]
        frames = [f for f in frames if metric in f.columns]
        if frames:
            stacked = pl.concat([f.select("epoch", metric) for f in frames])
            means = stacked.group_by("epoch").agg(pl.col(metric).mean()).sort("epoch")
            curves[f"{name} ({len(frames)})"] = dict(zip(means["epoch"], means[metric], strict=True))
    if not curves:
        return ""
    epochs = sorted({e for c in curves.values() for e in c})
    head = ["Model (seeds)", *map(str, epochs), "best epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, curve in curves.items():
        best = max(curve, key=curve.__getitem__)
        cells = [f"{curve[e]:.4f}" if e in curve else "" for e in epochs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


#: row name -> metric key (e.g. "test/head/ndcg@10") -> its paired comparison with the baseline row.
Comparisons = dict[str, dict[str, PairedComparison]]


def table(
    rows: dict[str, list[dict]],
    columns: Sequence[tuple[str, str]],
    with_runs: bool = False,
    comparisons: Comparisons | None = None,
) -> str:
    """Mean ± std per row and column; `*` where the row differs from the baseline (p < 0.05)."""
    head = ["Model", *(title for title, _ in columns)] + (["seeds", "wall (min/run)"] if with_runs else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, records in rows.items():
        cells = [name]
        for _, key in columns:
            found = (comparisons or {}).get(name, {}).get(key)
            star = "*" if found is not None and found.significant else ""
            cells.append(mean_std([r["metrics"][key] for r in records if key in r["metrics"]]) + star)
        if with_runs:
            seeds = ", ".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
            cells += [seeds, wall_cell(records)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wall_cell(records: Sequence[dict]) -> str:
    """Mean minutes per run over the runs that ran in one go: a resumed run's record holds only its
    last attempt, which would understate the cost. `–` when every run of the row was resumed."""
    whole = [r["wall_s"] for r in records if not r.get("resumed")]
    return f"{statistics.fmean(whole) / 60:.1f}" if whole else "–"


def _split_key(key: str) -> tuple[str, str | None]:
    """`test/head/ndcg@10` -> (`ndcg@10`, `head`); `test/ndcg@10` -> (`ndcg@10`, None)."""
    parts = key.removeprefix("test/").split("/")
    return parts[-1], (parts[0] if len(parts) == 2 else None)


def _restrict(side: Side, group: str | None) -> Side:
    if group is None:
        return side
    if "group" not in side.frame.columns:
        raise GenRecError(f"{side.runs[0]} has no popularity groups in its per-user file")
    return Side(side.runs, side.frame.filter(pl.col("group") == group), side.identity)


def compare_rows(
    rows: dict[str, list[dict]], baseline: str, keys: Sequence[str], resamples: int = 10_000, seed: int = 0
) -> tuple[Comparisons, dict[str, str]]:
    """Every row against the baseline row, user by user over their seeds (see `genrec compare`).

    Returns the comparisons and, for rows that have none, the reason (no per-user files, ...)."""
    metrics = sorted({_split_key(k)[0] for k in keys})
    sides: dict[str, Side] = {}
    problems: dict[str, str] = {}
    for name, records in rows.items():
        dirs = [Path(r["dir"]) for r in records if "dir" in r and (Path(r["dir"]) / USERS_FILE).is_file()]
        if len(dirs) < len(records):
            problems[name] = f"{len(records) - len(dirs)} of its {len(records)} runs have no {USERS_FILE}"
            continue
        try:
            sides[name] = load_side(dirs, metrics)
        except GenRecError as err:
            problems[name] = str(err)
    out: Comparisons = {}
    base = sides.get(baseline)
    if base is None:
        return out, problems
    for name, side in sides.items():
        if name == baseline:
            continue
        try:
            found = {}
            for key in keys:
                metric, group = _split_key(key)
                a, b = _restrict(side, group), _restrict(base, group)
                found[key] = compare_sides(a, b, [metric], resamples=resamples, seed=seed)[metric]
            out[name] = found
        except GenRecError as err:
            problems[name] = str(err)
    return out, problems


def _relative_cell(result: PairedComparison) -> str:
    if np.isnan(result.relative):
        return "–"
    star = "*" if result.significant else ""
    return (f"{100 * result.relative:+.1f}%{star} [{100 * result.ci_low:+.1f}, {100 * result.ci_high:+.1f}]"
            if not np.isnan(result.ci_low) else f"{100 * result.relative:+.1f}%{star}")  # fmt: skip


def significance_table(
    rows: dict[str, list[dict]],
    baseline: str,
    columns: Sequence[tuple[str, str]],
    comparisons: Comparisons,
    with_mde: bool = False,
) -> str:
    """Relative difference of each row from the baseline: per-user paired result where the runs
    have per-user files (with the bootstrap 95% CI, `*` for p < 0.05), else from the means."""
    if baseline not in rows:
        return ""
    mde = "MDE NDCG@10" if with_mde and any("test/ndcg@10" in c for c in comparisons.values()) else None
    head = ["Model", *(t for t, _ in columns)] + ([mde] if mde else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, records in rows.items():
        if name == baseline:
            continue
        cells = [name]
        found = comparisons.get(name, {})
        for _, key in columns:
            if key in found:
                cells.append(_relative_cell(found[key]))
                continue
            values = [r["metrics"][key] for r in records if key in r["metrics"]]
            base = [r["metrics"][key] for r in rows[baseline] if key in r["metrics"]]
            if not values or not base or not statistics.fmean(base):
                cells.append("–")
                continue
            cells.append(f"{100 * (statistics.fmean(values) / statistics.fmean(base) - 1):+.1f}% (means)")
        if mde:
            result = found.get("test/ndcg@10")
            cells.append(f"{100 * result.min_detectable_relative:.1f}%" if result is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance_note(rows: dict[str, list[dict]], baseline: str, comparisons: Comparisons,
                      problems: dict[str, str], resamples: int) -> str:  # fmt: skip
    """What the stars mean, on how many users and seeds, and what these runs can detect."""
    lines = []
    if comparisons:
        first = next(iter(next(iter(comparisons.values())).values()))  # a main-table metric: all users
        seeds = {name: len(rows[name]) for name in [baseline, *comparisons]}
        seed_text = ", ".join(f"{name} {n}" for name, n in seeds.items())
        lines.append(
            f"Against {baseline}, per test user: each user's metric is averaged over the seeds of its row "
            f"({first.n} users; seeds per row: {seed_text}). Cells: the relative difference of the means "
            f"with a percentile bootstrap {100 * first.confidence:g}% CI over users ({resamples:,} draws, "
            f"seed 0); `*` marks p < {first.alpha:g} in a two-sided paired t-test over users (also in the "
            "tables above and below). Head/tail cells compare the users whose target is in that group."
        )
        key = "test/ndcg@10"
        mdes = [c[key].min_detectable_relative for c in comparisons.values() if key in c]
        if mdes:
            low, high = f"{100 * min(mdes):.1f}%", f"{100 * max(mdes):.1f}%"
            span = f"{low} here" if low == high else f"{low} to {high} here"
            lines.append(
                f"MDE NDCG@10: the smallest relative NDCG@10 difference from {baseline} that these users and "
                f"seeds detect with {100 * first.power:g}% power at p < {first.alpha:g}, from the observed "
                f"variance of the per-user differences ({span}); a smaller true effect is likely to go "
                "unmarked."
            )
    for name, problem in problems.items():
        lines.append(f"No per-user comparison for {name}: {problem}.")
    return "\n\n".join(lines)


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


def ids_line(rows: dict[str, list[dict]]) -> str:
    """Which semantic IDs the runs trained on: one artifact for all, or a warning listing them."""
    by_ids: dict[str | None, list[str]] = {}
    paths: dict[str, str] = {}
    for name, records in rows.items():
        for record in records:
            found = record_ids(record)
            sha = found[0] if found else None
            if found:
                paths.setdefault(found[0], found[1])
            by_ids.setdefault(sha, []).append(f"{name} seed {record['seed']}")
    if set(by_ids) <= {None}:
        return "Semantic IDs: not pinned (each session built them from the rows' tokenizer configs)."
    if len(by_ids) == 1:
        sha = next(iter(by_ids))
        return f"Semantic IDs: `{paths[sha]}` for every run (codes sha256 `{sha[:12]}`)."
    groups = "; ".join(
        f"`{sha[:12] if sha else 'not recorded'}`: {', '.join(runs)}" for sha, runs in by_ids.items()
    )
    return f"**Warning: the runs trained on different semantic IDs**, so rows are not comparable: {groups}."


def report(
    rows: dict[str, list[dict]],
    title: str,
    baseline: str | None,
    comparisons: Comparisons | None = None,
    problems: dict[str, str] | None = None,
    resamples: int = 10_000,
) -> str:
    """The Markdown report; `comparisons` (from `compare_rows`) adds CIs and significance stars."""
    comparisons, problems = comparisons or {}, problems or {}
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
        "loading, validation and the final test, over the runs not resumed after a stop.",
        "",
        ids_line(rows),
        "",
        "## Main table (Hit@K = Recall@K: one held-out item per user)",
        "",
        table(rows, MAIN_COLUMNS, with_runs=True, comparisons=comparisons),
    ]
    compared = bool(baseline and baseline in rows and len(rows) > 1)
    if compared:
        relative = significance_table(rows, baseline, MAIN_COLUMNS, comparisons, with_mde=True)
        parts += ["", f"### Relative to {baseline}", "", relative]
        note = significance_note(rows, baseline, comparisons, problems, resamples)
        parts += ["", note] if note else []
    parts += ["", "## Head / tail items (test targets split by training popularity)", "",
              table(rows, group_cols, comparisons=comparisons)]  # fmt: skip
    if compared and comparisons:
        relative = significance_table(rows, baseline, group_cols, comparisons)
        parts += ["", f"Relative to {baseline}:", "", relative]
    if prefix_cols:
        title_line = "## Prefix match (a hit when the first k ID tokens match)"
        parts += ["", title_line, "", table(rows, prefix_cols)]
    parts += ["", "## Other cutoffs and coverage", "", table(rows, extra_cols, comparisons=comparisons), ""]
    if compared and comparisons:
        cutoffs = [c for c in extra_cols if c[1] in ("test/recall@20", "test/ndcg@20")]
        relative = significance_table(rows, baseline, cutoffs, comparisons)
        parts += [f"Relative to {baseline}:", "", relative, ""]
    parts += ["## Per seed (Hit@10 / NDCG@10)", "", per_seed_table(rows), ""]
    curves = curve_table(rows)
    if curves:
        parts += ["## Validation NDCG@10 by epoch (mean over the seeds with a curve)", "", curves, ""]
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
    parser.add_argument("--baseline", default=None, help="row the others are compared with (default: first)")
    parser.add_argument("--jobs", type=int, default=1, help="fits running at once")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per fit (0: torch default)")
    parser.add_argument("--report-only", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--archive", type=Path, help="keep finished runs' small files here (see above)")
    parser.add_argument("--ids", type=Path, help="semantic-ID artifact every fit trains on (see above)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the users")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: extra `genrec fit` arguments")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    for preset in args.preset:
        if not Path(preset).is_file():
            parser.error(f"preset {preset!r} not found")
    try:
        ids = pinned_ids(args.ids) if args.ids is not None else None
    except GenRecError as err:
        parser.error(str(err))
    if not args.report_only:
        if not args.row:
            parser.error("give at least one --row NAME=config.yaml (or --report-only)")
        jobs = [(row, seed) for seed in args.seeds for row in args.row]  # every row gets seed 0 first
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [
                pool.submit(
                    run_one, row, seed, args.runs, args.preset, extra, args.threads, args.archive, ids
                )
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
    if args.archive is not None:  # finished runs of the log root not archived yet (e.g. --report-only)
        for file in sorted(args.runs.glob("*/seed*/result.json")):
            fresh = not (args.archive / file.parent.parent.name / file.parent.name / "result.json").is_file()
            if fresh and (file.parent / USERS_FILE).is_file():
                archive_run(file.parent, args.archive)
    rows = load_results(args.runs, args.archive)
    if args.row:  # the order given on the command line, finished rows only
        rows = {r.name: rows[r.name] for r in args.row if r.name in rows} | rows
    baseline = args.baseline or (args.row[0].name if args.row else next(iter(rows), None))
    if args.baseline and args.baseline not in rows:
        parser.error(f"--baseline {args.baseline!r} is not a finished row ({', '.join(rows) or 'none'})")
    keys = [key for _, key in MAIN_COLUMNS] + [f"test/{g}/{m}" for g in ("head", "tail")
            for m in ("recall@10", "ndcg@10")] + ["test/recall@20", "test/ndcg@20"]  # fmt: skip
    comparisons, problems = compare_rows(rows, baseline, keys, args.resamples) if baseline else ({}, {})
    text = report(rows, args.title, baseline, comparisons, problems, args.resamples)
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
