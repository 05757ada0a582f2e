"""`genrec predict` output: every user's top-k items with scores, written once, atomically.

Rows are (user, rank, item, score), plus the dataset's raw user/item ids when the datamodule has
them, sorted by user then rank. Under DDP every rank writes a part file; rank 0 merges them after
a barrier, so the final file appears complete or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from genrec_lightning.artifacts import atomic_file


def _write_frame(frame: pl.DataFrame, path: Path) -> None:
    """Write parquet (default) or CSV (by suffix) atomically."""
    with atomic_file(path) as tmp:
        if path.suffix == ".csv":
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)


class TopKWriter(BasePredictionWriter):
    """Write the ranked lists returned by a recommender's `predict_step` to one file.

    Args:
        output_path: target file (`.parquet` or `.csv`); default `<log dir>/predictions.parquet`.
        raw_ids: add `user_raw` / `item_raw` columns from the datamodule's id maps.
    """

    def __init__(self, output_path: str | None = None, raw_ids: bool = True) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path
        self.raw_ids = raw_ids
        self.written: Path | None = None

    def target(self, trainer: L.Trainer) -> Path:
        if self.output_path is not None:
            return Path(self.output_path)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions.parquet"

    @staticmethod
    def to_frame(predictions: list[dict[str, torch.Tensor]]) -> pl.DataFrame:
        """Flatten {user [B], items [B, k], scores [B, k]} batches into one row per valid slot."""
        if not predictions:
            return pl.DataFrame(
                schema={"user": pl.Int64, "rank": pl.Int64, "item": pl.Int64, "score": pl.Float32}
            )
        users = torch.cat([p["user"] for p in predictions]).cpu()
        items = torch.cat([p["items"] for p in predictions]).cpu()
        scores = torch.cat([p["scores"] for p in predictions]).float().cpu()
        k = items.shape[1]
        frame = pl.DataFrame(
            {
                "user": users.repeat_interleave(k).numpy(),
                "rank": torch.arange(k).repeat(len(users)).numpy(),
                "item": items.flatten().numpy(),
                "score": scores.flatten().numpy(),
            }
        )
        return frame.filter(pl.col("item") >= 0)

    def _with_raw_ids(self, frame: pl.DataFrame, datamodule: Any) -> pl.DataFrame:
        id_maps = getattr(datamodule, "id_maps", None)
        if not self.raw_ids or not callable(id_maps):
            return frame
        users, items = id_maps()
        frame = frame.join(users, on="user", how="left").join(items, on="item", how="left")
        return frame.select("user", "user_raw", "rank", "item", "item_raw", "score")

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders: one list each
            predictions = [p for per_loader in predictions for p in per_loader]
        frame = self.to_frame(list(predictions))
        target = self.target(trainer)
        if trainer.world_size > 1:
            target = trainer.strategy.broadcast(target, src=0)
            part = target.with_name(f".{target.name}.part{trainer.global_rank}.parquet")
            _write_frame(frame, part)
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                parts = [
                    target.with_name(f".{target.name}.part{r}.parquet") for r in range(trainer.world_size)
                ]
                frame = pl.concat([pl.read_parquet(p) for p in parts])
                for p in parts:
                    p.unlink()
        if trainer.is_global_zero:
            frame = self._with_raw_ids(frame.sort("user", "rank"), trainer.datamodule)
            _write_frame(frame, target)
            print(f"wrote {frame.height:,} ranked items for {frame['user'].n_unique():,} users to {target}")
        self.written = target
        if trainer.world_size > 1:
            trainer.strategy.barrier()


__all__ = ["TopKWriter"]
