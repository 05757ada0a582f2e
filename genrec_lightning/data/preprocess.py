"""Preprocessing as pure functions over polars frames (docs/design.md §5).

raw interactions -> drop exact duplicates -> iterative k-core -> stable chronological order ->
dense ids -> per-user sequences; leave-one-out split positions are derived from the sequence
offsets with array arithmetic, never a loop over users.

Everything goes through lazy frames and the streaming engine, so the largest Amazon 2023
categories (tens of millions of rows) are handled without a Python object per row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from genrec_lightning.errors import GenRecError

log = logging.getLogger(__name__)

ROW = "_row"


class EmptyDatasetError(GenRecError, ValueError):
    """Filtering left nothing to train on; the message names the filter responsible."""


def _collect(frame: pl.LazyFrame) -> pl.DataFrame:
    return frame.collect(engine="streaming")


def deduplicate(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """Drop repeated (user, item, timestamp) rows, keeping the first occurrence in file order.

    Adds the input row number `_row`, used later to break timestamp ties by input order.
    """
    return (
        interactions.with_row_index(ROW)
        .unique(subset=["user", "item", "timestamp"], keep="first", maintain_order=True)
        .select("user", "item", "timestamp", ROW)
    )


def k_core(interactions: pl.DataFrame | pl.LazyFrame, min_user: int = 5, min_item: int = 5) -> pl.DataFrame:
    """Iteratively keep users with >= `min_user` and items with >= `min_item` interactions.

    Repeats until no row is removed. Raises `EmptyDatasetError` naming the filter (user or item,
    and the round) that removed the last rows.
    """
    frame = _collect(interactions.lazy()) if isinstance(interactions, pl.LazyFrame) else interactions
    if frame.height == 0:
        raise EmptyDatasetError("the dataset has no interactions before filtering; check the raw files")
    rounds = 0
    while True:
        rounds += 1
        before = frame.height
        for column, minimum in (("user", min_user), ("item", min_item)):
            if minimum <= 1:
                continue
            frame = frame.filter(pl.len().over(column) >= minimum)
            if frame.height == 0:
                raise EmptyDatasetError(
                    f"the {column} filter (>= {minimum} interactions per {column}, round {rounds} of the "
                    f"iterative {min_user}/{min_item}-core) removed every interaction; lower "
                    f"min_{column}_interactions or use a larger dataset"
                )
        if frame.height == before:
            return frame


@dataclass(frozen=True)
class Sequences:
    """Per-user chronological item sequences in a flat layout.

    `items[offsets[u]:offsets[u + 1]]` is user `u`'s sequence (dense item ids, oldest first).
    """

    items: np.ndarray  # int64 [num_interactions]
    timestamps: np.ndarray  # int64 [num_interactions]
    offsets: np.ndarray  # int64 [num_users + 1]

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def index_and_order(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Dense ids and chronological order.

    Dense ids follow the sorted raw ids (independent of file order). Each user's interactions are
    ordered by timestamp, ties broken by input order (`_row`). Returns (ordered interactions with
    dense `user`/`item`, user map `user, user_raw`, item map `item, item_raw`).
    """
    users = frame.select(pl.col("user").unique().sort().alias("user_raw")).with_row_index("user")
    items = frame.select(pl.col("item").unique().sort().alias("item_raw")).with_row_index("item")
    ordered = (
        frame.rename({"user": "user_raw", "item": "item_raw"})
        .join(users, on="user_raw", how="left")
        .join(items, on="item_raw", how="left")
        .sort(["user", "timestamp", ROW])
        .select(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64), "timestamp")
    )
    return (
        ordered,
        users.with_columns(pl.col("user").cast(pl.Int64)),
        items.with_columns(pl.col("item").cast(pl.Int64)),
    )


def to_sequences(ordered: pl.DataFrame, num_users: int) -> Sequences:
    """Flat sequences from interactions already sorted by dense user then time."""
    user = ordered["user"].to_numpy()
    counts = np.bincount(user, minlength=num_users)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Sequences(
        items=ordered["item"].to_numpy().astype(np.int64),
        timestamps=ordered["timestamp"].to_numpy().astype(np.int64),
        offsets=offsets,
    )


@dataclass(frozen=True)
class SplitPositions:
    """Flat positions of the target item of every sample of one split, and its user.

    A sample's history is the (at most `max_history`) items of the same user before its target.
    """

    targets: np.ndarray  # int64 [num_samples], index into Sequences.items
    users: np.ndarray  # int64 [num_samples]

    def __len__(self) -> int:
        return len(self.targets)


def leave_one_out(seqs: Sequences) -> dict[str, SplitPositions]:
    """Leave-one-out splits (docs/design.md §5).

    test target = last item; validation target = second to last; training = every prefix of
    `seq[:-2]` predicting its next item, i.e. targets at sequence positions 1 .. n-3. Users need
    at least 3 interactions (the caller drops shorter ones).
    """
    lengths = seqs.lengths
    if lengths.size and lengths.min() < 3:
        raise ValueError("leave-one-out needs at least 3 interactions per user")
    starts = seqs.offsets[:-1]
    users = np.arange(seqs.num_users, dtype=np.int64)
    per_user = np.maximum(lengths - 3, 0)
    train_users = np.repeat(users, per_user)
    # position inside the user's sequence: 1, 2, ..., n-3 for each user
    first = np.cumsum(per_user) - per_user
    within = np.arange(per_user.sum(), dtype=np.int64) - np.repeat(first, per_user) + 1
    return {
        "train": SplitPositions(targets=starts[train_users] + within, users=train_users),
        "val": SplitPositions(targets=starts + lengths - 2, users=users),
        "test": SplitPositions(targets=starts + lengths - 1, users=users),
    }


def statistics(seqs: Sequences, num_items: int) -> dict[str, float | int]:
    """The paper's Table-2 figures (history mean length = interactions per user) and a few more."""
    n = int(seqs.offsets[-1])
    users = seqs.num_users
    lengths = seqs.lengths
    return {
        "interactions": n,
        "users": users,
        "items": num_items,
        "history_mean_length": n / users if users else 0.0,
        "history_median_length": float(np.median(lengths)) if users else 0.0,
        "history_max_length": int(lengths.max()) if users else 0,
        "density": n / (users * num_items) if users and num_items else 0.0,
    }
