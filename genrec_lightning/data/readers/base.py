"""What every reader shares: the standard frames, input checks and line-numbered parse errors.

A reader turns one source's raw files into two polars frames:

- interactions: `user` (raw id), `item` (raw id), `timestamp` (Int64, seconds), in file order;
- items: `item` (raw id) plus the raw metadata fields that item text can be built from.

JSON-lines files are parsed by polars (streaming-friendly, no Python object per row); only when
polars rejects a file or a required field is missing does a line-by-line pass find the first bad
line and name it (`file:line`), or skip bad lines and report how many with `skip_malformed`.
Delimited MovieLens files are small and parsed line by line with the same checks.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from genrec_lightning.artifacts import file_fingerprint
from genrec_lightning.errors import GenRecError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user", "item", "timestamp")
_CHUNK_ROWS = 200_000


class DataNotFoundError(GenRecError, FileNotFoundError):
    """A raw data file is missing; the message says where to get it."""


class MalformedDataError(GenRecError, ValueError):
    """A raw data file has a line that cannot be parsed; the message names file and line."""


@dataclass
class RawDataset:
    """The standard frames a reader returns (see the module docstring)."""

    interactions: pl.DataFrame
    items: pl.DataFrame


class DatasetReader(ABC):
    """One raw source. Subclasses hold their settings as constructor arguments."""

    #: Short dataset name used in cache paths and reports.
    name: str = "dataset"
    #: Metadata fields joined into the item text by default.
    default_text_fields: tuple[str, ...] = ("title",)

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Raw files this reader parses (each must exist before `read`)."""

    @abstractmethod
    def read(self) -> RawDataset:
        """Parse the raw files into the standard frames."""

    def check_files(self) -> None:
        """Raise `DataNotFoundError` naming the first missing file and how to get it."""
        for path in self.source_files():
            require_file(path, self.how_to_get())

    def how_to_get(self) -> str:
        """Instructions printed when a raw file is missing."""
        return "see the README section on bringing raw data"

    def config(self) -> dict[str, Any]:
        """Settings and source-file identities that determine the parsed output (for cache keys)."""
        return {
            "reader": type(self).__name__,
            "name": self.name,
            "files": [file_fingerprint(p) for p in self.source_files()],
            "skip_malformed": getattr(self, "skip_malformed", False),
        }


def malformed_line(where: str, problem: str) -> MalformedDataError:
    """The error for one bad input line: where it is, what is wrong, and the two ways out."""
    return MalformedDataError(
        f"{where}: {problem}. Fix or remove the line, or set skip_malformed=true to drop malformed "
        "lines (their count is reported)."
    )


def require_file(path: str | Path, how_to_get: str) -> Path:
    """Return `path` if it is a file, else raise an error naming it and how to obtain it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(f"Missing data file: {p}\n  How to get it: {how_to_get}")
    return p


def open_text(path: str | Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a plain or gzip-compressed text file for reading."""
    p = Path(path)
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding=encoding, newline="")
    return open(p, encoding=encoding, newline="")


def _broken_gzip(path: Path, err: Exception) -> MalformedDataError:
    """The error for a `.gz` file that cannot be decompressed (an interrupted or corrupted download)."""
    if isinstance(err, EOFError):
        problem = "is truncated (not a complete gzip file)"
    elif isinstance(err, gzip.BadGzipFile):
        problem = f"is not a gzip file ({err})"
    else:
        problem = f"is corrupted (gzip data error: {err})"
    return MalformedDataError(f"{path} {problem}: download it again")


def numbered_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; undecodable bytes are named by line, and a
    truncated or corrupted `.gz` file by name (gzip reports it as a bare EOFError/OSError)."""
    with open_text(path, encoding) as f:
        number = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as err:
                raise MalformedDataError(
                    f"{path}:{number + 1}: bytes that are not valid {encoding} ({err.reason}); "
                    "re-encode the file or check that it is the right file"
                ) from err
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                raise _broken_gzip(path, err) from err
            if not line:
                return
            number += 1
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _conforms(value: Any, dtype: pl.DataType) -> bool:
    """Whether a parsed Python value can stand in a column of `dtype` without losing meaning."""
    if value is None:
        return True
    if dtype == pl.Int64:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if dtype == pl.Float64:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype == pl.String:
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    if isinstance(dtype, pl.List):
        return isinstance(value, list)
    return True


def _normalise(value: Any, dtype: pl.DataType) -> Any:
    if value is None:
        return None
    if dtype == pl.Int64:
        return int(value)
    if dtype == pl.String:
        return str(value)
    return value


def _check_required(frame: pl.DataFrame, schema: Mapping[str, pl.DataType], required: Sequence[str]) -> None:
    """Reject what polars accepts silently: nulls, and JSON lists/objects stringified into id columns."""
    if not frame.height:
        return
    bad = [pl.col(k).is_null() for k in required]
    bad += [pl.col(k).str.contains(r"^\s*[\[{]") for k in required if schema[k] == pl.String]
    if frame.select(pl.any_horizontal(bad).any()).item():
        raise ValueError("a required field is null or not a scalar")


def _records_to_frame(rows: list[dict[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dict(schema), orient="row", strict=False)


def read_json_lines(
    path: str | Path,
    schema: Mapping[str, pl.DataType],
    required: Sequence[str],
    *,
    skip_malformed: bool = False,
    python_literal: bool = False,
) -> pl.DataFrame:
    """Parse a (gzip) JSON-lines file into the columns of `schema`.

    `required` fields must be present, non-null and of the schema type on every line. With
    `python_literal` each line is a Python dict literal (Amazon 2014 metadata) parsed with
    `ast.literal_eval`, never `eval`. Bad lines raise `MalformedDataError` with `file:line`, or are
    dropped and counted when `skip_malformed` is set.
    """
    path = Path(path)
    if not python_literal:
        try:
            frame = pl.read_ndjson(path, schema=dict(schema))
            _check_required(frame, schema, required)
            return frame
        except Exception as err:  # polars gives no line numbers: locate the problem line by line
            log.debug("fast JSON parse of %s failed (%s); scanning line by line", path, err)
    parse: Callable[[str], Any] = ast.literal_eval if python_literal else json.loads
    chunks: list[pl.DataFrame] = []
    rows: list[dict[str, Any]] = []
    skipped = 0
    for number, line in numbered_lines(path, "utf-8"):
        problem = None
        try:
            record = parse(line)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
            problem = f"not a valid {'Python literal' if python_literal else 'JSON'} object ({err})"
        else:
            if not isinstance(record, dict):
                problem = f"expected an object, got {type(record).__name__}"
            else:
                for key in required:
                    if record.get(key) is None:
                        problem = f"required field {key!r} is missing or null"
                        break
                    if not _conforms(record[key], schema[key]):
                        problem = f"field {key!r} has value {record[key]!r}, expected {schema[key]}"
                        break
        if problem is not None:
            if not skip_malformed:
                raise malformed_line(f"{path}:{number}", problem)
            skipped += 1
            continue
        rows.append(
            {
                k: (_normalise(record.get(k), t) if _conforms(record.get(k), t) else None)
                for k, t in schema.items()
            }
        )
        if len(rows) >= _CHUNK_ROWS:
            chunks.append(_records_to_frame(rows, schema))
            rows = []
    chunks.append(_records_to_frame(rows, schema))
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (skip_malformed=true)", path, skipped)
    return pl.concat(chunks, how="vertical")


def read_delimited(
    path: str | Path,
    separator: str,
    schema: Mapping[str, pl.DataType],
    *,
    encoding: str = "utf-8",
    skip_malformed: bool = False,
    allow_extra_fields: bool = False,
) -> pl.DataFrame:
    """Parse a header-less delimited text file (multi-character separators allowed, e.g. `::`).

    Each line must have exactly `len(schema)` fields (or at least that many when
    `allow_extra_fields`) and integer columns must hold integers; otherwise the first bad line
    is named, or bad lines are dropped and counted with `skip_malformed`.
    """
    path = Path(path)
    names = list(schema)
    good: list[list[str]] = []
    skipped = 0
    for number, line in numbered_lines(path, encoding):
        fields = line.split(separator)
        if allow_extra_fields and len(fields) > len(names):
            fields = fields[: len(names)]
        problem = None
        if len(fields) != len(names):
            problem = f"expected {len(names)} fields separated by {separator!r}, found {len(fields)}"
        else:
            for name, value in zip(names, fields, strict=True):
                if schema[name] == pl.Int64 and not value.strip().lstrip("-").isdigit():
                    problem = f"field {name!r} is {value!r}, expected an integer"
                    break
        if problem is not None:
            if not skip_malformed:
                raise malformed_line(f"{path}:{number}", problem)
            skipped += 1
            continue
        good.append(fields)
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (skip_malformed=true)", path, skipped)
    columns = list(zip(*good, strict=True)) if good else [() for _ in names]
    return pl.DataFrame(
        {name: pl.Series(name, col, dtype=pl.String) for name, col in zip(names, columns, strict=True)}
    ).with_columns([pl.col(n).str.strip_chars().cast(t) for n, t in schema.items() if t != pl.String])


def _as_text(column: str) -> pl.Expr:
    """A metadata column rendered as text: lists (and lists of lists) joined by ', '."""
    return pl.col(column).map_batches(_series_as_text, return_dtype=pl.String)


def _series_as_text(s: pl.Series) -> pl.Series:
    while isinstance(s.dtype, pl.List):
        inner = s.dtype.inner
        if isinstance(inner, pl.List):
            s = s.list.eval(pl.element().list.explode(keep_nulls=False, empty_as_null=False))
            continue
        s = s.list.eval(pl.element().cast(pl.String).str.strip_chars())
        s = s.list.eval(pl.element().filter(pl.element().str.len_chars() > 0).unique(maintain_order=True))
        s = s.list.join(", ")
        break
    s = s.cast(pl.String).str.strip_chars()
    return s.replace("", None)


def build_item_text(items: pl.DataFrame, fields: Sequence[str]) -> pl.Series:
    """`Field: value; Field: value` per item from the given metadata columns (nulls left out).

    Items whose fields are all empty get null, so the caller can apply and report its fallback.
    """
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise ValueError(
            f"text field(s) {missing} not in the item metadata; available fields: {items.columns}"
        )
    parts = [
        pl.when(_as_text(f).is_not_null()).then(pl.lit(f"{f.replace('_', ' ').capitalize()}: ") + _as_text(f))
        for f in fields
    ]
    text = items.select(pl.concat_str(parts, separator="; ", ignore_nulls=True).alias("text"))["text"]
    return text.replace("", None)
