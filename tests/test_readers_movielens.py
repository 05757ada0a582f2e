"""MovieLens readers: embedded wheel, original 100K and 1M files, bad input, opt-in download."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import polars as pl
import pytest

from genrec_lightning.data.readers import DataNotFoundError, MalformedDataError, MovieLens1M, MovieLens100K
from genrec_lightning.data.readers.movielens import ML100K_GENRES


def test_embedded_ml100k_raw_counts() -> None:
    raw = MovieLens100K().read()
    inter = raw.interactions
    assert inter.columns[:3] == ["user", "item", "timestamp"]
    assert inter.height == 100_000
    assert inter["user"].n_unique() == 943
    assert inter["item"].n_unique() == 1682
    assert raw.items.height == 1682
    toy = raw.items.filter(pl.col("item") == 1).row(0, named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert set(toy["genres"]) == {"Animation", "Children's", "Comedy"}


def _write_ml100k(root: Path, data_lines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text("\n".join(data_lines) + "\n")
    flags = ["0"] * len(ML100K_GENRES)
    flags[ML100K_GENRES.index("Comedy")] = "1"
    flags[ML100K_GENRES.index("Drama")] = "1"
    rows = [
        "|".join(["1", "Amélie (2001)", "01-Jan-2001", "", "http://x", *flags]),
        "|".join(["2", "Heat (1995)", "01-Jan-1995", "", "http://y", *(["0"] * len(ML100K_GENRES))]),
    ]
    (root / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))


def test_original_ml100k_files(tmp_path: Path) -> None:
    _write_ml100k(tmp_path, ["10\t1\t5\t881250949", "10\t2\t3\t881250950", "11\t2\t4\t881250000"])
    raw = MovieLens100K(str(tmp_path)).read()
    assert raw.interactions.select("user", "item", "timestamp").rows() == [
        (10, 1, 881250949),
        (10, 2, 881250950),
        (11, 2, 881250000),
    ]
    amelie = raw.items.filter(pl.col("item") == 1).row(0, named=True)
    assert amelie["title"] == "Amélie (2001)"  # latin-1 decoded
    assert amelie["genres"] == ["Comedy", "Drama"]
    assert raw.items.filter(pl.col("item") == 2)["genres"].to_list() == [[]]


def test_ml100k_malformed_line_is_named(tmp_path: Path) -> None:
    _write_ml100k(tmp_path, ["10\t1\t5\t881250949", "10\t2\t3\t881250950", "11\t2\t4"])
    with pytest.raises(MalformedDataError, match=r"u\.data:3: expected 4 fields"):
        MovieLens100K(str(tmp_path)).read()


def test_ml100k_non_integer_field_is_named(tmp_path: Path) -> None:
    _write_ml100k(tmp_path, ["10\t1\t5\t881250949", "ten\t2\t3\t881250950"])
    with pytest.raises(MalformedDataError, match=r"u\.data:2: field 'user_id' is 'ten'"):
        MovieLens100K(str(tmp_path)).read()


def test_ml100k_skip_malformed_reports_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_ml100k(tmp_path, ["10\t1\t5\t881250949", "garbage", "11\t2\t4\t881250000", "12\tx\t1\t1"])
    with caplog.at_level(logging.WARNING):
        raw = MovieLens100K(str(tmp_path), skip_malformed=True).read()
    assert raw.interactions["user"].to_list() == [10, 11]
    assert "skipped 2 malformed line(s)" in caplog.text


def test_missing_file_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        MovieLens100K(str(tmp_path / "nowhere")).read()
    assert str(tmp_path / "nowhere" / "u.data") in str(err.value)
    assert "ml-100k.zip" in str(err.value)
    with pytest.raises(DataNotFoundError, match="ratings.dat"):
        MovieLens1M(str(tmp_path / "nowhere")).read()


def test_ml1m_files(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    movies = "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Señor (1996)::Animation|Children's\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    raw = MovieLens1M(str(root)).read()
    assert raw.interactions.select("user", "item", "timestamp").rows() == [
        (1, 1193, 978300760),
        (1, 661, 978302109),
        (2, 1193, 978298413),
    ]
    senor = raw.items.filter(pl.col("item") == 661).row(0, named=True)
    assert senor["title"] == "Señor (1996)"
    assert senor["genres"] == ["Animation", "Children's"]


def test_download_is_opt_in_and_works_from_a_local_mirror(tmp_path: Path) -> None:
    source = tmp_path / "fixture"
    _write_ml100k(source, ["1\t1\t5\t10", "1\t2\t5\t11"])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-100k.zip", "w") as zf:
        for name in ("u.data", "u.item"):
            zf.write(source / name, f"ml-100k/{name}")
    target = tmp_path / "data" / "ml-100k"
    with pytest.raises(DataNotFoundError):  # no download unless asked
        MovieLens100K(str(target), url=mirror.as_uri()).read()
    assert not target.exists()
    raw = MovieLens100K(str(target), download=True, url=mirror.as_uri()).read()
    assert raw.interactions.height == 2
    assert sorted(p.name for p in target.iterdir()) == ["u.data", "u.item"]
