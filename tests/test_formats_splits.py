"""Every raw format through its datamodule: the same interactions give the expected splits.

One random interaction log (with duplicate rows and timestamp ties) is written in each source's
exact file format; the expected per-user sequences are computed here with plain Python (dedup,
iterative k-core, time order with ties by file order) and compared with the datamodule's splits.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import HashEncoder, assert_leave_one_out, python_k_core

from genrec_lightning.data.datamodules import (
    AmazonDataModule,
    MovieLensDataModule,
    SequenceDataModule,
    YelpDataModule,
)
from genrec_lightning.data.readers.movielens import ML100K_GENRES

K = 3
Log = list[tuple[int, int, int]]  # (user, item, unix seconds) in file order


def make_log(seed: int = 0) -> Log:
    rng = np.random.default_rng(seed)
    rows = [(int(u), int(i), int(t)) for u, i, t in zip(
        rng.integers(0, 25, 400), rng.integers(0, 30, 400), rng.integers(0, 60, 400) * 3600 + 1_400_000_000,
        strict=True)]  # fmt: skip
    rows += rows[:20]  # exact duplicates, dropped
    return rows


def expected_sequences(rows: Log, user_key: Callable, item_key: Callable) -> dict:
    unique = list(dict.fromkeys(rows))
    core = python_k_core([(u, i, t, n) for n, (u, i, t) in enumerate(unique)], K)
    per_user: dict = defaultdict(list)
    for u, i, t, n in core:
        per_user[user_key(u)].append((t, n, item_key(i)))
    return {u: [i for _, _, i in sorted(v)] for u, v in per_user.items()}


def _gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def write_ml100k(root: Path, rows: Log) -> SequenceDataModule:
    (root / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    flags = "|".join(["0"] * len(ML100K_GENRES))
    items = sorted({i for _, i, _ in rows})
    (root / "u.item").write_text(
        "".join(f"{i}|Film {i} (1990)|01-Jan-1990||http://x|{flags}\n" for i in items)
    )
    return MovieLensDataModule(variant="100k", root=str(root), **_common(root))


def write_ml1m(root: Path, rows: Log) -> SequenceDataModule:
    (root / "ratings.dat").write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in rows))
    items = sorted({i for _, i, _ in rows})
    (root / "movies.dat").write_text("".join(f"{i}::Film {i} (1990)::Drama|Comedy\n" for i in items))
    return MovieLensDataModule(variant="1m", root=str(root), **_common(root))


def write_amazon2014(root: Path, rows: Log) -> SequenceDataModule:
    _gz(
        root / "reviews_Toys_5.json.gz",
        [
            json.dumps({"reviewerID": f"U{u}", "asin": f"A{i}", "unixReviewTime": t, "overall": 4.0})
            for u, i, t in rows
        ],
    )
    items = sorted({i for _, i, _ in rows})
    _gz(
        root / "meta_Toys.json.gz",
        [repr({"asin": f"A{i}", "title": f"Toy {i}", "categories": [["Toys"]]}) for i in items],
    )
    return AmazonDataModule(category="Toys", version="2014", root=str(root), **_common(root))


def write_amazon2023(root: Path, rows: Log) -> SequenceDataModule:
    _gz(
        root / "Toys.jsonl.gz",
        [
            json.dumps({"user_id": f"U{u}", "parent_asin": f"P{i}", "timestamp": t * 1000, "rating": 4.0})
            for u, i, t in rows
        ],
    )
    items = sorted({i for _, i, _ in rows})
    _gz(
        root / "meta_Toys.jsonl.gz",
        [json.dumps({"parent_asin": f"P{i}", "title": f"Toy {i}"}) for i in items],
    )
    return AmazonDataModule(category="Toys", version="2023", root=str(root), **_common(root))


def write_yelp(root: Path, rows: Log) -> SequenceDataModule:
    def date(t: int) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    (root / "yelp_academic_dataset_review.json").write_text(
        "".join(
            json.dumps({"user_id": f"U{u}", "business_id": f"B{i}", "stars": 4, "date": date(t)}) + "\n"
            for u, i, t in rows
        )  # fmt: skip
    )
    items = sorted({i for _, i, _ in rows})
    (root / "yelp_academic_dataset_business.json").write_text(
        "".join(
            json.dumps({"business_id": f"B{i}", "name": f"Cafe {i}", "city": "Leeds"}) + "\n" for i in items
        )
    )
    return YelpDataModule(root=str(root), **_common(root))


def _common(root: Path) -> dict:
    cache = str(root / "cache")
    return dict(
        min_user_interactions=K,
        min_item_interactions=K,
        max_history=4,
        cache_dir=cache,
        encoder=HashEncoder(),
    )


FORMATS = {
    "ml100k": (write_ml100k, int, int),
    "ml1m": (write_ml1m, int, int),
    "amazon2014": (write_amazon2014, lambda u: f"U{u}", lambda i: f"A{i}"),
    "amazon2023": (write_amazon2023, lambda u: f"U{u}", lambda i: f"P{i}"),
    "yelp": (write_yelp, lambda u: f"U{u}", lambda i: f"B{i}"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_to_leave_one_out_splits(fmt: str, tmp_path: Path) -> None:
    write, user_key, item_key = FORMATS[fmt]
    rows = make_log()
    dm = write(tmp_path, rows)
    dm.prepare_data()
    dm.setup()
    reference = expected_sequences(rows, user_key, item_key)
    stats = dm.statistics()
    assert stats["raw"]["interactions"] == len(rows)
    assert stats["interactions"] == sum(len(v) for v in reference.values())
    assert stats["users"] == len(reference)
    assert any(len(v) > dm.max_history for v in reference.values())  # truncation is exercised
    assert_leave_one_out(dm, reference)
    assert dm.item_embeddings().shape == (dm.num_items, 8)
