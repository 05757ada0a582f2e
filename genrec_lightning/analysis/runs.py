"""Read what a `genrec fit`/`test` run directory holds: TensorBoard scalars, test metrics, config, weights.

A run directory is a logger version directory (`runs/<name>/version_<n>`): event files,
`config.yaml`, `test_metrics.json` and `checkpoints/`. Every reader returns an empty result for
a missing piece, so one report can cover tokenizer, recommender and UniGRec runs alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor

from genrec_lightning.modules.id_table import LEGACY_STATE_KEY, STATE_KEY

SCALAR_SCHEMA = {"tag": pl.String, "step": pl.Int64, "value": pl.Float64, "wall_time": pl.Float64}


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory as a Path, or a clear error if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist (expected runs/<name>/version_<n>)")
    if not any(path.glob("events.out.tfevents.*")) and not (path / "test_metrics.json").is_file():
        raise FileNotFoundError(
            f"{path} has no TensorBoard event files and no test_metrics.json: pass a logger version "
            "directory such as runs/tiger/version_0"
        )
    return path


def read_scalars(run_dir: str | Path) -> pl.DataFrame:
    """Every scalar of the run's event files as rows (tag, step, value, wall_time), in step order.

    A resumed run appends a second event file; a step logged twice keeps its latest value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows: list[tuple[str, int, float, float]] = []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            rows.extend((tag, e.step, e.value, e.wall_time) for e in events.Scalars(tag))
    frame = pl.DataFrame(rows, schema=SCALAR_SCHEMA, orient="row")
    return frame.sort("wall_time").unique(["tag", "step"], keep="last").sort(["tag", "step"])


def series(scalars: pl.DataFrame, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one tag; empty lists if the run never logged it."""
    rows = scalars.filter(pl.col("tag") == tag)
    return rows["step"].to_list(), rows["value"].to_list()


def last_values(scalars: pl.DataFrame, prefix: str) -> dict[str, float]:
    """Latest value of every tag starting with `prefix`."""
    rows = scalars.filter(pl.col("tag").str.starts_with(prefix)).group_by("tag").agg(pl.col("value").last())
    return dict(zip(rows["tag"].to_list(), rows["value"].to_list(), strict=True))


def read_test_metrics(run_dir: str | Path) -> dict[str, float]:
    """The `metrics` of the run's test_metrics.json ({} if the run was never tested)."""
    path = Path(run_dir) / "test_metrics.json"
    return json.loads(path.read_text())["metrics"] if path.is_file() else {}


#: Where a run keeps its config: a fit writes config.yaml; a directory that was only scored keeps
#: the scoring command's own (`genrec test` into a fit's directory leaves config.yaml alone).
CONFIG_FILES = ("config.yaml", "test_config.yaml", "validate_config.yaml", "predict_config.yaml")


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's saved config ({} if absent): config.yaml, else the config of the command that scored it."""
    for name in CONFIG_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def config_value(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """`config_value(cfg, "model.init_args.loss.init_args.decay")`; `default` where a key is missing."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    """`<run>/checkpoints` (Lightning's default) and any ModelCheckpoint `dirpath` of the config."""
    callbacks = config_value(read_config(run_dir), "trainer.callbacks", []) or []
    dirpaths = [
        config_value(c, "init_args.dirpath")
        for c in callbacks
        if isinstance(c, Mapping) and str(c.get("class_path", "")).endswith("ModelCheckpoint")
    ]
    return [run_dir / "checkpoints", *(Path(d) for d in dirpaths if d)]


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's final weights: `last.ckpt`, else the tested checkpoint, else the newest one; or None."""
    run_dir = Path(run_dir)
    folders = [f for f in _checkpoint_dirs(run_dir) if f.is_dir()]
    for folder in folders:
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
    metrics = run_dir / "test_metrics.json"
    tested = json.loads(metrics.read_text()).get("checkpoint") if metrics.is_file() else None
    if tested and Path(tested).is_file():
        return Path(tested)
    found = sorted((p for f in folders for p in f.glob("*.ckpt")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _state_dict(source: Path) -> dict[str, Tensor]:
    if source.is_dir():  # a semantic-ID artifact: its tokenizer weights, if it stored them
        weights = source / "tokenizer.safetensors"
        return load_file(str(weights)) if weights.is_file() else {}
    if source.suffix == ".safetensors":
        return load_file(str(source))
    return torch.load(source, map_location="cpu", weights_only=False).get("state_dict", {})


def load_state_tensor(source: str | Path, suffix: str) -> Tensor | None:
    """The tensor whose key ends with `suffix` in a checkpoint, safetensors file, run or artifact dir."""
    path = Path(source)
    if path.is_dir() and not (path / "tokenizer.safetensors").is_file():  # a run directory
        checkpoint = find_checkpoint(path)
        if checkpoint is None:
            return None
        path = checkpoint
    matches = [value for key, value in _state_dict(path).items() if key.endswith(suffix)]
    return matches[0] if matches else None


def load_id_table(source: str | Path) -> Tensor | None:
    """The item ID table [N, L] a generative run decodes (checkpoints before and after the
    `ItemIdTable` component store it under different keys)."""
    for key in (STATE_KEY, LEGACY_STATE_KEY):
        table = load_state_tensor(source, key)
        if table is not None:
            return table
    return None


def load_codebooks(source: str | Path) -> Tensor | None:
    """Codebooks [L, K, d] of an RQ-VAE/PQ-VAE tokenizer (tokenizer or UniGRec run, checkpoint, artifact)."""
    books = load_state_tensor(source, "quantizer.codebooks")
    return None if books is None else books.float()


__all__ = [
    "load_id_table",
    "check_run_dir",
    "config_value",
    "find_checkpoint",
    "last_values",
    "load_codebooks",
    "load_state_tensor",
    "read_config",
    "read_scalars",
    "read_test_metrics",
    "series",
]
