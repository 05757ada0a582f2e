"""`test_users.parquet`: one row per test user, the input of paired significance tests.

A mean over 943 users hides which users a change helped; a paired test needs each user's own
outcome in both runs. After every test epoch this callback writes, on rank 0 and atomically,
the outcomes the recommender gathered from all processes (`RecommenderModule.test_user_outcomes`):
user and target (dense and raw ids), the 1-based rank of the target in the returned list (null
when absent), the target's popularity group, and Recall/NDCG at every configured cutoff. The
file's metadata names the dataset, its data hash and the checkpoint, so `genrec compare` can
refuse runs scored on different data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
from lightning.pytorch.callbacks import Callback

from genrec_lightning.artifacts import atomic_file

FILE_NAME = "test_users.parquet"
#: Parquet key-value metadata key holding the run's identity (a JSON object).
METADATA_KEY = "genrec"


def outcomes_frame(
    outcomes: dict[str, Any], group_names: tuple[str, ...], id_maps: tuple[pl.DataFrame, pl.DataFrame] | None
) -> pl.DataFrame:
    """The per-user table of `RecommenderModule.test_user_outcomes`, sorted by user then target."""
    metrics = [name for name in outcomes if "@" in name]
    rank = outcomes["rank"].numpy()
    frame = pl.DataFrame(
        {
            "user": outcomes["user"].numpy(),
            "target": outcomes["target"].numpy(),
            "rank": rank + 1,  # 0 where the target is absent, null below
            **{name: outcomes[name].double().numpy() for name in metrics},
        }
    ).with_columns(rank=pl.when(pl.col("rank") > 0).then(pl.col("rank").cast(pl.Int64)))
    if "group" in outcomes and group_names:
        names = pl.Series(list(group_names), dtype=pl.String)
        frame = frame.with_columns(group=names.gather(outcomes["group"].numpy()))
    else:
        frame = frame.with_columns(group=pl.lit(None, dtype=pl.String))
    if id_maps is not None:
        users, items = id_maps
        frame = frame.join(users, on="user", how="left").join(
            items.rename({"item": "target", "item_raw": "target_raw"}), on="target", how="left"
        )
    else:
        frame = frame.with_columns(user_raw=pl.lit(None), target_raw=pl.lit(None))
    first = ["user", "user_raw", "target", "target_raw", "rank", "group"]
    return frame.select(*first, *metrics).sort("user", "target")


class TestUsersWriter(Callback):
    """Write every tested user's outcome to `<log dir>/test_users.parquet` (or `output_path`).

    `genrec fit` and `genrec test` add it for every recommender. Under DDP each process holds the
    rows of all processes (gathered by the metric), so rank 0 writes one row per user, exactly
    what a 1-process test writes.
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, output_path: str | None = None) -> None:
        self.output_path = output_path
        self.written: Path | None = None

    def target(self, trainer: L.Trainer) -> Path:
        if self.output_path is not None:
            return Path(self.output_path)
        return Path(trainer.log_dir or trainer.default_root_dir) / FILE_NAME

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        outcomes = getattr(pl_module, "test_user_outcomes", None)
        target = self.target(trainer)  # log_dir is a broadcast under DDP: every rank asks
        if outcomes is None or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        id_maps = getattr(trainer.datamodule, "id_maps", None)
        frame = outcomes_frame(outcomes, pl_module.test_group_names, id_maps() if callable(id_maps) else None)
        identity = {
            **(pl_module.data_identity or {}),
            "checkpoint": str(trainer.ckpt_path or ""),
            "metric_ks": list(pl_module.metric_ks),
            "top_k": pl_module.top_k,
            "model": type(pl_module).__name__,
        }
        with atomic_file(target) as tmp:
            frame.write_parquet(tmp, metadata={METADATA_KEY: json.dumps(identity, sort_keys=True)})
        self.written = target
        print(f"wrote the outcomes of {frame.height:,} test users to {target}")


def read_identity(path: str | Path) -> dict[str, Any]:
    """The run identity stored in a test_users.parquet ({} for a file without one)."""
    text = pl.read_parquet_metadata(path).get(METADATA_KEY)
    return json.loads(text) if text else {}


__all__ = ["FILE_NAME", "METADATA_KEY", "TestUsersWriter", "outcomes_frame", "read_identity"]
