"""Is run A better than run B on the same test users, and by how much? (`genrec compare`)

Each side is one or more runs (seeds) that wrote `test_users.parquet`. Every user's metric is
averaged over the runs of its side, and the two sides are compared user by user: means, absolute
and relative difference, a paired t-test and a Wilcoxon signed-rank p-value, and a percentile
bootstrap CI of the relative difference that resamples users (`analysis.significance`). Runs
scored on other data or other test users are refused, naming the difference, because a paired
test of unmatched users means nothing. The command line is `genrec_lightning.cli.compare`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_lightning.analysis.significance import PairedComparison, compare_paired
from genrec_lightning.callbacks.test_users import FILE_NAME, read_identity
from genrec_lightning.errors import ConfigError, RunError

#: Metrics compared when none is named: the token-weighting paper's table columns.
DEFAULT_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
#: Identity keys that must agree between compared runs.
DATA_KEYS = ("dataset", "data_hash", "num_items")


@dataclass(frozen=True)
class Side:
    """The runs of one side and their per-user metrics averaged over those runs."""

    runs: tuple[Path, ...]
    frame: pl.DataFrame  # user, target, group, and one seed-averaged column per metric, sorted by user
    identity: dict[str, Any]

    def values(self, metric: str) -> np.ndarray:
        return self.frame[metric].to_numpy()


def users_file(run: str | Path) -> Path:
    """The run's test_users.parquet (a run directory or the file itself), or a one-line error."""
    path = Path(run)
    file = path if path.suffix == ".parquet" else path / FILE_NAME
    if not path.exists():
        raise RunError(f"{path} does not exist: pass run directories such as runs/tiger/version_0")
    if not file.is_file():
        raise RunError(
            f"{path} has no {FILE_NAME}: test the run to write it, e.g. `genrec test --config "
            f"{path / 'config.yaml'} --ckpt_path <its best .ckpt>` (runs tested before this file existed)"
        )
    return file


def _read(run: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    file = users_file(run)
    try:
        frame, identity = pl.read_parquet(file), read_identity(file)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise RunError(f"{file} cannot be read ({str(err).splitlines()[0]}): test the run again") from err
    if frame["user"].is_duplicated().any():
        raise RunError(f"{file} has several rows for one user: a paired test needs one test item per user")
    return frame.sort("user"), identity


def _describe_users(a: pl.DataFrame, b: pl.DataFrame, name_a: Path, name_b: Path) -> str | None:
    """What differs between the test users (and targets) of two runs, or None when they match."""
    users_a, users_b = set(a["user"].to_list()), set(b["user"].to_list())
    if users_a != users_b:
        only_a, only_b = sorted(users_a - users_b), sorted(users_b - users_a)
        return (
            f"{name_a} tested {len(users_a)} users and {name_b} {len(users_b)}; {len(only_a)} only in the "
            f"first (e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]}). Test both on "
            "the whole test split (no limit_test_batches) of the same data"
        )
    differ = (a["target"] != b["target"]).sum()
    if differ:
        return f"{name_a} and {name_b} have different test targets for {differ} users: the data splits differ"
    return None


def load_side(runs: Sequence[str | Path], metrics: Sequence[str] | None = None) -> Side:
    """Read the runs of one side, check they share data and users, average each user's metrics."""
    if not runs:
        raise ConfigError("a side of the comparison has no runs: pass at least one run directory")
    paths = tuple(Path(r) for r in runs)
    frames, identities = zip(*(_read(r) for r in paths), strict=True)
    for path, frame, identity in zip(paths[1:], frames[1:], identities[1:], strict=True):
        check_same_data(paths[0], identities[0], path, identity)
        problem = _describe_users(frames[0], frame, paths[0], path)
        if problem:
            raise RunError(problem)
    available = [c for c in frames[0].columns if "@" in c and all(c in f.columns for f in frames)]
    names = resolve_metrics(metrics, available)
    stacked = np.stack([np.stack([f[m].to_numpy() for m in names]) for f in frames])  # [runs, M, U]
    mean = stacked.mean(axis=0)
    keep = [c for c in ("user", "target", "group") if c in frames[0].columns]  # same targets: same groups
    columns = {m: pl.Series(mean[i], dtype=pl.Float64) for i, m in enumerate(names)}
    frame = frames[0].select(keep).with_columns(**columns)
    return Side(paths, frame, dict(identities[0]))


def check_same_data(name_a: Path, a: dict[str, Any], name_b: Path, b: dict[str, Any]) -> None:
    differ = [key for key in DATA_KEYS if key in a and key in b and a[key] != b[key]]
    if differ:
        what = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in differ)
        raise RunError(
            f"{name_a} and {name_b} were tested on different data ({what}): "
            "compare runs of the same data config"
        )


def resolve_metrics(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Metric columns by name (`ndcg@10`, `test/NDCG@10`); the defaults that exist when none is named."""
    if not requested:
        found = [m for m in DEFAULT_METRICS if m in available]
        return found or list(available)
    names = []
    for name in requested:
        key = name.lower().removeprefix("test/")
        if key not in available:
            raise ConfigError(f"metric {name!r} is not in these runs; choose from {', '.join(available)}")
        names.append(key)
    return list(dict.fromkeys(names))


def compare_sides(
    a: Side,
    b: Side,
    metrics: Sequence[str],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, PairedComparison]:
    """Paired comparison of `a` against `b` for every metric (refuses unmatched data or users)."""
    check_same_data(a.runs[0], a.identity, b.runs[0], b.identity)
    problem = _describe_users(a.frame, b.frame, a.runs[0], b.runs[0])
    if problem:
        raise RunError(problem)
    try:
        return {
            m: compare_paired(
                a.values(m),
                b.values(m),
                resamples=resamples,
                confidence=confidence,
                seed=seed,
                alpha=alpha,
                power=power,
            )  # fmt: skip
            for m in metrics
        }
    except ValueError as err:  # e.g. fewer than 2 users, a NaN in a file edited by hand
        raise RunError(f"cannot compare {a.runs[0]} with {b.runs[0]}: {err}") from err


__all__ = ["DATA_KEYS", "DEFAULT_METRICS", "Side", "compare_sides", "load_side", "resolve_metrics"]
