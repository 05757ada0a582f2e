"""Yelp Open Dataset reader: reviews as interactions, businesses as items.

Review dates are text ("YYYY-MM-DD HH:MM:SS", taken as UTC). They are converted as one column
expression; only when some fail to parse is the file read again, to name the first bad line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from genrec_lightning.data.readers.base import (
    DatasetReader,
    RawDataset,
    malformed_line,
    numbered_lines,
    read_json_lines,
)

log = logging.getLogger(__name__)

YELP_URL = "https://www.yelp.com/dataset"
#: The current release writes date and time; older releases wrote the date alone.
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


def _unix_seconds(column: str) -> pl.Expr:
    """Unix seconds (Int64, UTC) of a date-string column; null where no accepted format matches."""
    parsed = [
        pl.col(column).str.strip_chars().str.to_datetime(fmt, time_zone="UTC", strict=False, exact=True)
        for fmt in DATE_FORMATS
    ]
    return pl.coalesce(parsed).dt.epoch("s").cast(pl.Int64)


def _line_of_row(path: Path, row: int, field: str, value: str) -> int | None:
    """Line number of the `row`-th (0-based) record, if that line really holds `value` in `field`.

    Both parse paths turn non-blank lines into rows in order, so counting non-blank lines finds
    the record; the value check guards against any mismatch rather than naming a wrong line.
    """
    for index, (number, line) in enumerate(numbered_lines(path, "utf-8")):
        if index == row:
            try:
                return number if json.loads(line).get(field) == value else None
            except (ValueError, AttributeError):
                return None
    return None


class Yelp(DatasetReader):
    """The Yelp Open Dataset (review and business files, plain JSON lines)."""

    name = "yelp"
    default_text_fields = ("name", "categories", "city")

    REVIEW_SCHEMA = {"user_id": pl.String, "business_id": pl.String, "date": pl.String, "stars": pl.Float64}
    # `categories` is one comma-separated string in the raw file and is kept that way.
    BUSINESS_SCHEMA = {
        "business_id": pl.String,
        "name": pl.String,
        "city": pl.String,
        "state": pl.String,
        "categories": pl.String,
    }

    def __init__(self, root: str = "data/yelp", skip_malformed: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.skip_malformed = skip_malformed

    @property
    def reviews_file(self) -> Path:
        return self.root / "yelp_academic_dataset_review.json"

    @property
    def business_file(self) -> Path:
        return self.root / "yelp_academic_dataset_business.json"

    def source_files(self) -> list[Path]:
        return [self.reviews_file, self.business_file]

    def how_to_get(self) -> str:
        return (
            f"the Yelp Open Dataset must be downloaded by hand after accepting Yelp's licence at {YELP_URL}; "
            "extract yelp_academic_dataset_review.json and yelp_academic_dataset_business.json "
            f"into {self.root}"
        )

    def read(self) -> RawDataset:
        self.check_files()
        reviews = read_json_lines(
            self.reviews_file,
            self.REVIEW_SCHEMA,
            required=("user_id", "business_id", "date"),
            skip_malformed=self.skip_malformed,
        )
        interactions = reviews.select(
            pl.col("user_id").alias("user"),
            pl.col("business_id").alias("item"),
            _unix_seconds("date").alias("timestamp"),
            pl.col("stars").alias("rating"),
            pl.col("date"),
        )
        bad = interactions["timestamp"].is_null()
        if bad.any():
            interactions = self._drop_bad_dates(interactions, bad)
        business = read_json_lines(
            self.business_file,
            self.BUSINESS_SCHEMA,
            required=("business_id",),
            skip_malformed=self.skip_malformed,
        )
        items = business.rename({"business_id": "item"}).unique(
            subset="item", keep="first", maintain_order=True
        )
        return RawDataset(interactions=interactions.drop("date"), items=items)

    def _drop_bad_dates(self, interactions: pl.DataFrame, bad: pl.Series) -> pl.DataFrame:
        """Raise on the first unparseable date, or drop those rows and report how many."""
        if not self.skip_malformed:
            row = int(bad.arg_true()[0])
            value = interactions["date"][row]
            line = _line_of_row(self.reviews_file, row, "date", value)
            where = (
                f"{self.reviews_file}:{line}"
                if line is not None
                else f"{self.reviews_file} (record {row + 1})"
            )
            raise malformed_line(where, f"field 'date' is {value!r}, expected 'YYYY-MM-DD HH:MM:SS'")
        count = int(bad.sum())
        log.warning(
            "%s: skipped %d line(s) with an unparseable date (skip_malformed=true)", self.reviews_file, count
        )
        return interactions.filter(~bad)
