"""Preprocessing throughput on a synthetic Amazon-2023-format review file.

Writes `<n>` reviews in the exact `<Category>.jsonl.gz` layout (plus a metadata file), then times
each stage of the pipeline — polars JSON parse, dedup, iterative 5-core, dense ids + ordering,
leave-one-out split — and prints rows/s and the process's peak memory.

    python benchmarks/preprocess_amazon2023.py --rows 2000000
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from genrec_lightning.data import preprocess as pp
from genrec_lightning.data.readers import Amazon2023


def write_fixture(root: Path, rows: int, seed: int = 0) -> None:
    """Reviews with Zipf-like user/item popularity and review text, as in the real release."""
    rng = np.random.default_rng(seed)
    ids = pl.DataFrame(
        {
            "user": rng.zipf(1.3, rows) % max(rows // 8, 1),
            "item": rng.zipf(1.2, rows) % max(rows // 20, 1),
        }
    )
    frame = ids.select(
        pl.lit(5.0).alias("rating"),
        pl.lit("Great product").alias("title"),
        pl.lit("Works as described, would buy again.").alias("text"),
        pl.format("B{}", pl.col("item").cast(pl.String).str.zfill(9)).alias("parent_asin"),
        pl.format("AE{}", pl.col("user")).alias("user_id"),
        pl.Series("timestamp", 1_500_000_000_000 + rng.integers(0, 10**11, rows)),
        pl.lit(True).alias("verified_purchase"),
    )
    plain = root / "reviews.jsonl"
    frame.write_ndjson(plain)
    with open(plain, "rb") as src, gzip.open(root / "Bench.jsonl.gz", "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, length=1 << 24)
    plain.unlink()
    meta = frame.select(pl.col("parent_asin").unique().sort(), pl.lit("A product").alias("title"))
    meta.write_ndjson(root / "meta.jsonl")
    with open(root / "meta.jsonl", "rb") as src, gzip.open(root / "meta_Bench.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="number of synthetic reviews")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_fixture(root, args.rows)
        print(f"fixture: {args.rows:,} reviews written in {time.perf_counter() - t:.1f} s")
        timings: dict[str, float] = {}

        def stage(name: str, fn):  # noqa: ANN001, ANN202
            start = time.perf_counter()
            out = fn()
            timings[name] = time.perf_counter() - start
            return out

        raw = stage("read (polars ndjson)", lambda: Amazon2023("Bench", root=str(root)).read())
        deduped = stage(
            "deduplicate", lambda: pp.deduplicate(raw.interactions.lazy()).collect(engine="streaming")
        )
        core = stage("5-core", lambda: pp.k_core(deduped, 5, 5))
        ordered, users, items = stage("dense ids + order", lambda: pp.index_and_order(core))
        seqs = stage("sequences", lambda: pp.to_sequences(ordered, users.height))
        splits = stage("leave-one-out", lambda: pp.leave_one_out(seqs))
    total = sum(timings.values())
    print(f"after 5-core: {core.height:,} interactions, {users.height:,} users, {items.height:,} items")
    print(f"training samples: {len(splits['train']):,}")
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds:8.2f} s")
    print(f"  {'total':<22} {total:8.2f} s  ({args.rows / total:,.0f} raw rows/s)")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak memory (max RSS): {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
