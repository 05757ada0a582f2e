"""Amazon 2014/2023 and Yelp readers on small fixtures written in each raw format.

Expected values are computed here independently of the readers (e.g. Yelp dates through
`datetime`), so a wrong conversion in a reader fails the test.
"""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from genrec_lightning.data.readers import (
    Amazon2014,
    Amazon2023,
    DataNotFoundError,
    MalformedDataError,
    Yelp,
    build_item_text,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write one record per line, gzip-compressed when the name ends in `.gz`."""
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- Amazon 2014

REVIEWS_2014 = [
    {"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1_300_000_000, "reviewText": "ok"},
    {"reviewerID": "U2", "asin": "A2", "overall": 3.0, "unixReviewTime": 1_300_000_100},
    {"reviewerID": "U1", "asin": "A3", "overall": 4.0, "unixReviewTime": 1_300_000_200},
]
# Python dict literals with single quotes, as in the real meta_<Category>.json.gz files.
META_2014 = [
    "{'asin': 'A1', 'title': \"Rose Lip Balm\", 'brand': 'Acme', 'price': 4.5, "
    "'categories': [['Beauty', 'Lips'], ['Beauty', 'Gifts']], 'description': 'Soft balm.', "
    "'related': {'also_bought': ['A2']}, 'salesRank': {'Beauty': 12}}",
    "{'asin': 'A2', 'categories': [['Beauty']]}",
    "{'asin': 'A1', 'title': 'Duplicate row that must be ignored'}",
]


def amazon2014_files(
    root: Path, meta: list[str] | None = None, reviews: list[str] | None = None
) -> Amazon2014:
    root.mkdir(parents=True, exist_ok=True)
    write_lines(root / "reviews_Beauty_5.json.gz", reviews or [json.dumps(r) for r in REVIEWS_2014])
    write_lines(root / "meta_Beauty.json.gz", meta or META_2014)
    return Amazon2014(category="Beauty", root=str(root))


def test_amazon2014_parses_reviews_and_literal_metadata(tmp_path: Path) -> None:
    reader = amazon2014_files(tmp_path)
    assert reader.name == "amazon2014-Beauty"
    data = reader.read()

    inter = data.interactions
    assert inter.columns == ["user", "item", "timestamp", "rating"]
    assert inter.schema["timestamp"] == pl.Int64
    assert inter.schema["rating"] == pl.Float64
    assert inter["user"].to_list() == [r["reviewerID"] for r in REVIEWS_2014]
    assert inter["item"].to_list() == [r["asin"] for r in REVIEWS_2014]
    assert inter["timestamp"].to_list() == [r["unixReviewTime"] for r in REVIEWS_2014]
    assert inter["rating"].to_list() == [r["overall"] for r in REVIEWS_2014]

    items = data.items
    assert items.columns == ["item", "title", "brand", "categories", "description", "price"]
    assert items.schema["categories"] == pl.List(pl.List(pl.String))
    assert items.schema["price"] == pl.Float64
    # One row per item, the first occurrence wins; A3 has no metadata and is simply absent.
    assert items["item"].to_list() == ["A1", "A2"]
    a1 = items.row(0, named=True)
    assert a1["title"] == "Rose Lip Balm"
    assert a1["categories"] == [["Beauty", "Lips"], ["Beauty", "Gifts"]]
    assert a1["price"] == 4.5
    a2 = items.row(1, named=True)
    assert a2["title"] is None and a2["brand"] is None
    assert a2["categories"] == [["Beauty"]]


def test_amazon2014_item_text(tmp_path: Path) -> None:
    reader = amazon2014_files(tmp_path)
    items = reader.read().items
    text = build_item_text(items, reader.default_text_fields)
    assert text[0] == (
        "Title: Rose Lip Balm; Brand: Acme; Categories: Beauty, Lips, Gifts; Description: Soft balm."
    )


def test_amazon2014_missing_file_names_path(tmp_path: Path) -> None:
    reader = amazon2014_files(tmp_path)
    (tmp_path / "meta_Beauty.json.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        reader.read()
    assert str(tmp_path / "meta_Beauty.json.gz") in str(err.value)
    assert "reviews_Beauty_5.json.gz" in reader.how_to_get()


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("['A9', 'not a dict']", "expected an object"),
        ("{'asin': 'A9', 'title': 'unterminated", "not a valid Python literal"),
        ("{'asin': None, 'title': 'no id'}", "'asin'"),
    ],
)
def test_amazon2014_malformed_metadata_names_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    meta = [META_2014[0], bad_line, META_2014[1]]
    reader = amazon2014_files(tmp_path, meta=meta)
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    message = str(err.value)
    assert f"{tmp_path / 'meta_Beauty.json.gz'}:2" in message
    assert reason in message


def test_amazon2014_metadata_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    evil = "{'asin': 'A9', 'title': __import__('os').system('touch " + str(marker) + "')}"
    reader = amazon2014_files(tmp_path / "data", meta=[META_2014[0], META_2014[1], evil])
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    assert ":3" in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "PWNED").exists()


def test_amazon2014_skip_malformed_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reviews = [json.dumps(REVIEWS_2014[0]), '{"reviewerID": "U2", "asin": ', json.dumps(REVIEWS_2014[2])]
    meta = [META_2014[0], "42", "{'asin': 'A2'", META_2014[1]]
    amazon2014_files(tmp_path, meta=meta, reviews=reviews)
    reader = Amazon2014(category="Beauty", root=str(tmp_path), skip_malformed=True)
    with caplog.at_level(logging.WARNING):
        data = reader.read()
    assert data.interactions["item"].to_list() == ["A1", "A3"]
    assert data.items["item"].to_list() == ["A1", "A2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reviews_Beauty_5.json.gz" in w and "skipped 1 " in w for w in warnings)
    assert any("meta_Beauty.json.gz" in w and "skipped 2 " in w for w in warnings)


# --------------------------------------------------------------------------------------------- Amazon 2023

REVIEWS_2023 = [
    {"rating": 5.0, "title": "great", "text": "x", "images": [], "asin": "B1v", "parent_asin": "B1",
     "user_id": "AE1", "timestamp": 1_588_687_728_923, "helpful_vote": 0, "verified_purchase": True},
    {"rating": 2.0, "asin": "B2", "parent_asin": "B2", "user_id": "AE2", "timestamp": 1_600_000_000_999},
    {"rating": 4.0, "asin": "B3", "parent_asin": "B3", "user_id": "AE1", "timestamp": 1_600_000_001_000},
]  # fmt: skip
META_2023 = [
    {"main_category": "Musical Instruments", "title": "Guitar Strings", "average_rating": 4.6,
     "features": ["Nickel", "Light gauge"], "description": ["Bright tone.", "Long life."], "price": "None",
     "images": [{"large": "u"}], "store": "StringCo", "categories": ["Musical Instruments", "Strings"],
     "details": {"Weight": "1 oz"}, "parent_asin": "B1"},
    {"title": "Capo", "features": [], "description": [], "store": None, "categories": [],
     "parent_asin": "B2"},
    {"title": "Duplicate row that must be ignored", "parent_asin": "B1"},
]  # fmt: skip


def amazon2023_files(
    root: Path, reviews: list[str] | None = None, meta: list[str] | None = None, **kwargs: bool
) -> Amazon2023:
    root.mkdir(parents=True, exist_ok=True)
    write_lines(root / "Musical_Instruments.jsonl.gz", reviews or [json.dumps(r) for r in REVIEWS_2023])
    write_lines(root / "meta_Musical_Instruments.jsonl.gz", meta or [json.dumps(m) for m in META_2023])
    return Amazon2023(category="Musical_Instruments", root=str(root), **kwargs)


def test_amazon2023_parses_and_converts_milliseconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = amazon2023_files(tmp_path)
    assert reader.name == "amazon2023-Musical_Instruments"
    with caplog.at_level(logging.DEBUG, logger="genrec_lightning.data.readers.base"):
        data = reader.read()
    # Realistic lines (nested `details`, `images`, a "None" price) must stay on the polars fast path.
    assert not any("line by line" in r.getMessage() for r in caplog.records)

    inter = data.interactions
    assert inter.columns == ["user", "item", "timestamp", "rating"]
    assert inter.schema["timestamp"] == pl.Int64
    assert inter["user"].to_list() == ["AE1", "AE2", "AE1"]
    assert inter["item"].to_list() == ["B1", "B2", "B3"]  # parent_asin, not the variant asin
    assert inter["timestamp"].to_list() == [1_588_687_728, 1_600_000_000, 1_600_000_001]
    assert inter["rating"].to_list() == [5.0, 2.0, 4.0]

    items = data.items
    assert items.columns == [
        "item", "title", "store", "features", "description", "categories", "main_category",
    ]  # fmt: skip
    assert items.schema["description"] == pl.List(pl.String)
    assert items["item"].to_list() == ["B1", "B2"]
    b1 = items.row(0, named=True)
    assert b1["title"] == "Guitar Strings"
    assert b1["features"] == ["Nickel", "Light gauge"]
    assert b1["categories"] == ["Musical Instruments", "Strings"]
    assert b1["main_category"] == "Musical Instruments"

    text = build_item_text(items, reader.default_text_fields)
    assert text[0] == (
        "Title: Guitar Strings; Store: StringCo; Categories: Musical Instruments, Strings; "
        "Description: Bright tone., Long life."
    )
    assert text[1] == "Title: Capo"


def test_amazon2023_missing_file_names_path(tmp_path: Path) -> None:
    reader = Amazon2023(category="Toys", root=str(tmp_path))
    with pytest.raises(DataNotFoundError) as err:
        reader.read()
    assert str(tmp_path / "Toys.jsonl.gz") in str(err.value)


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"user_id": "AE9", "parent_asin": "B9", "timestamp": 1600000000000',  # truncated JSON
        '{"user_id": "AE9", "parent_asin": "B9", "timestamp": null}',  # required field null
        '{"user_id": "AE9", "timestamp": 1600000000000}',  # required field missing
    ],
)
def test_amazon2023_malformed_review_names_line(tmp_path: Path, bad_line: str) -> None:
    reviews = [json.dumps(REVIEWS_2023[0]), json.dumps(REVIEWS_2023[1]), bad_line]
    reader = amazon2023_files(tmp_path, reviews=reviews)
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    assert f"{tmp_path / 'Musical_Instruments.jsonl.gz'}:3" in str(err.value)


def test_amazon2023_skip_malformed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reviews = [json.dumps(REVIEWS_2023[0]), '{"user_id": null, "parent_asin": "B2", "timestamp": 1}']
    reviews.append(json.dumps(REVIEWS_2023[2]))
    reader = amazon2023_files(tmp_path, reviews=reviews, skip_malformed=True)
    with caplog.at_level(logging.WARNING):
        data = reader.read()
    assert data.interactions["item"].to_list() == ["B1", "B3"]
    assert data.interactions["timestamp"].to_list() == [1_588_687_728, 1_600_000_001]
    assert any("skipped 1 " in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --------------------------------------------------------------------------------------------------- Yelp

REVIEWS_YELP = [
    {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 4.0, "useful": 0,
     "text": "Nice.", "date": "2018-07-07 22:09:11"},
    {"review_id": "r2", "user_id": "u2", "business_id": "b2", "stars": 1, "date": "2012-01-03 15:28:18"},
    {"review_id": "r3", "user_id": "u1", "business_id": "b2", "stars": 5.0, "date": "2020-02-29 00:00:00"},
]  # fmt: skip
BUSINESS_YELP = [
    {"business_id": "b1", "name": "Taco Spot", "address": "1 Main St", "city": "Tucson", "state": "AZ",
     "stars": 4.5, "categories": "Mexican, Restaurants, Tacos", "attributes": {"WiFi": "u'free'"}},
    {"business_id": "b2", "name": "Bike Shop", "city": "Reno", "state": "NV", "categories": None},
]  # fmt: skip


def unix_utc(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


def yelp_files(root: Path, reviews: list[str] | None = None, **kwargs: bool) -> Yelp:
    root.mkdir(parents=True, exist_ok=True)
    write_lines(root / "yelp_academic_dataset_review.json", reviews or [json.dumps(r) for r in REVIEWS_YELP])
    write_lines(root / "yelp_academic_dataset_business.json", [json.dumps(b) for b in BUSINESS_YELP])
    return Yelp(root=str(root), **kwargs)


def test_yelp_parses_dates_as_utc_seconds(tmp_path: Path) -> None:
    reader = yelp_files(tmp_path)
    data = reader.read()

    inter = data.interactions
    assert inter.columns == ["user", "item", "timestamp", "rating"]
    assert inter.schema["timestamp"] == pl.Int64
    assert inter["timestamp"].to_list() == [unix_utc(r["date"]) for r in REVIEWS_YELP]
    assert inter["user"].to_list() == ["u1", "u2", "u1"]
    assert inter["item"].to_list() == ["b1", "b2", "b2"]
    assert inter["rating"].to_list() == [4.0, 1.0, 5.0]

    items = data.items
    assert items.columns == ["item", "name", "city", "state", "categories"]
    assert items.schema["categories"] == pl.String
    assert items["categories"].to_list() == ["Mexican, Restaurants, Tacos", None]
    text = build_item_text(items, reader.default_text_fields)
    assert text.to_list() == [
        "Name: Taco Spot; Categories: Mexican, Restaurants, Tacos; City: Tucson",
        "Name: Bike Shop; City: Reno",
    ]


def test_yelp_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        Yelp(root=str(tmp_path)).read()
    assert str(tmp_path / "yelp_academic_dataset_review.json") in str(err.value)
    assert "yelp.com/dataset" in str(err.value)


def test_yelp_bad_date_names_line(tmp_path: Path) -> None:
    bad = dict(REVIEWS_YELP[1], date="2012-13-45 99:00:00")
    # A blank line before the bad record checks that the reported number is the file line.
    reviews = [json.dumps(REVIEWS_YELP[0]), "", json.dumps(bad), json.dumps(REVIEWS_YELP[2])]
    reader = yelp_files(tmp_path, reviews=reviews)
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    message = str(err.value)
    assert f"{tmp_path / 'yelp_academic_dataset_review.json'}:3" in message
    assert "2012-13-45 99:00:00" in message


def test_yelp_broken_json_names_line(tmp_path: Path) -> None:
    reviews = [json.dumps(REVIEWS_YELP[0]), '{"user_id": "u2", "business_id": "b2", "date": }']
    reader = yelp_files(tmp_path, reviews=reviews)
    with pytest.raises(MalformedDataError) as err:
        reader.read()
    assert f"{tmp_path / 'yelp_academic_dataset_review.json'}:2" in str(err.value)


def test_yelp_skip_malformed_dates_and_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad_date = dict(REVIEWS_YELP[1], date="yesterday")
    reviews = [json.dumps(REVIEWS_YELP[0]), json.dumps(bad_date), "not json", json.dumps(REVIEWS_YELP[2])]
    reader = yelp_files(tmp_path, reviews=reviews, skip_malformed=True)
    with caplog.at_level(logging.WARNING):
        data = reader.read()
    assert data.interactions["timestamp"].to_list() == [
        unix_utc(REVIEWS_YELP[0]["date"]),
        unix_utc(REVIEWS_YELP[2]["date"]),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 1 " in w and "date" in w for w in warnings)  # the unparseable date
    assert any("skipped 1 malformed" in w for w in warnings)  # the broken JSON line
