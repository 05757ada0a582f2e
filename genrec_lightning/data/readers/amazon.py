"""Amazon review readers: the 2014 release (McAuley et al.) and Amazon Reviews'23.

Both releases ship one review file and one metadata file per product category. Reviews become
the interaction frame; metadata becomes the item frame. Items reviewed but missing from the
metadata are kept (the datamodule gives them fallback text), and when the metadata repeats an
item only its first row counts, so the item frame has one row per item.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from genrec_lightning.data.readers.base import DatasetReader, RawDataset, read_json_lines

AMAZON2014_URL = "https://jmcauley.ucsd.edu/data/amazon/"
AMAZON2023_URL = "https://amazon-reviews-2023.github.io/"


def _first_row_per_item(items: pl.DataFrame) -> pl.DataFrame:
    """Keep the first metadata row of each item, in file order, so joins on `item` stay one-to-one."""
    return items.unique(subset="item", keep="first", maintain_order=True)


class Amazon2014(DatasetReader):
    """One category of the 2014 Amazon data: 5-core reviews plus product metadata.

    The metadata file is not JSON: each line is a Python dict literal (single quotes), so it is
    parsed with `ast.literal_eval` through `read_json_lines(python_literal=True)`; nothing in
    the file is ever executed.
    """

    default_text_fields = ("title", "brand", "categories", "description")

    REVIEW_SCHEMA = {
        "reviewerID": pl.String,
        "asin": pl.String,
        "unixReviewTime": pl.Int64,
        "overall": pl.Float64,
    }
    META_SCHEMA = {
        "asin": pl.String,
        "title": pl.String,
        "brand": pl.String,
        "categories": pl.List(pl.List(pl.String)),
        "description": pl.String,
        "price": pl.Float64,
    }

    def __init__(
        self, category: str = "Beauty", root: str = "data/amazon2014", skip_malformed: bool = False
    ) -> None:
        self.category = category
        self.root = Path(root).expanduser()
        self.skip_malformed = skip_malformed
        self.name = f"amazon2014-{category}"

    @property
    def reviews_file(self) -> Path:
        return self.root / f"reviews_{self.category}_5.json.gz"

    @property
    def meta_file(self) -> Path:
        return self.root / f"meta_{self.category}.json.gz"

    def source_files(self) -> list[Path]:
        return [self.reviews_file, self.meta_file]

    def how_to_get(self) -> str:
        return (
            f"download the 5-core review file reviews_{self.category}_5.json.gz and the metadata file "
            f"meta_{self.category}.json.gz from the 2014 'Amazon product data' page (J. McAuley, UCSD): "
            f"{AMAZON2014_URL}, and put both in {self.root}"
        )

    def read(self) -> RawDataset:
        self.check_files()
        reviews = read_json_lines(
            self.reviews_file,
            self.REVIEW_SCHEMA,
            required=("reviewerID", "asin", "unixReviewTime"),
            skip_malformed=self.skip_malformed,
        )
        meta = read_json_lines(
            self.meta_file,
            self.META_SCHEMA,
            required=("asin",),
            skip_malformed=self.skip_malformed,
            python_literal=True,
        )
        interactions = reviews.select(
            pl.col("reviewerID").alias("user"),
            pl.col("asin").alias("item"),
            pl.col("unixReviewTime").alias("timestamp"),
            pl.col("overall").alias("rating"),
        )
        items = _first_row_per_item(meta.rename({"asin": "item"}))
        return RawDataset(interactions=interactions, items=items)


class Amazon2023(DatasetReader):
    """One category of Amazon Reviews'23, keyed by `parent_asin` (the product, not the variant).

    The big categories hold tens of millions of reviews, so everything stays columnar: polars
    parses only the fields listed in the schemas and the conversions are column expressions.
    """

    default_text_fields = ("title", "store", "categories", "description")

    REVIEW_SCHEMA = {
        "user_id": pl.String,
        "parent_asin": pl.String,
        "timestamp": pl.Int64,
        "rating": pl.Float64,
    }
    META_SCHEMA = {
        "parent_asin": pl.String,
        "title": pl.String,
        "store": pl.String,
        "features": pl.List(pl.String),
        "description": pl.List(pl.String),
        "categories": pl.List(pl.String),
        "main_category": pl.String,
    }

    def __init__(
        self,
        category: str = "Musical_Instruments",
        root: str = "data/amazon2023",
        skip_malformed: bool = False,
    ) -> None:
        self.category = category
        self.root = Path(root).expanduser()
        self.skip_malformed = skip_malformed
        self.name = f"amazon2023-{category}"

    @property
    def reviews_file(self) -> Path:
        return self.root / f"{self.category}.jsonl.gz"

    @property
    def meta_file(self) -> Path:
        return self.root / f"meta_{self.category}.jsonl.gz"

    def source_files(self) -> list[Path]:
        return [self.reviews_file, self.meta_file]

    def how_to_get(self) -> str:
        return (
            f"download the review file {self.category}.jsonl.gz and the metadata file "
            f"meta_{self.category}.jsonl.gz of Amazon Reviews'23 ({AMAZON2023_URL}) "
            f"and put both in {self.root}"
        )

    def read(self) -> RawDataset:
        self.check_files()
        reviews = read_json_lines(
            self.reviews_file,
            self.REVIEW_SCHEMA,
            required=("user_id", "parent_asin", "timestamp"),
            skip_malformed=self.skip_malformed,
        )
        meta = read_json_lines(
            self.meta_file, self.META_SCHEMA, required=("parent_asin",), skip_malformed=self.skip_malformed
        )
        interactions = reviews.select(
            pl.col("user_id").alias("user"),
            pl.col("parent_asin").alias("item"),
            # The 2023 release stores milliseconds; the standard frame wants whole seconds.
            (pl.col("timestamp") // 1000).cast(pl.Int64).alias("timestamp"),
            pl.col("rating"),
        )
        items = _first_row_per_item(meta.rename({"parent_asin": "item"}))
        return RawDataset(interactions=interactions, items=items)
