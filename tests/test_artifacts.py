"""Config hashes, atomic directory/JSON writes and artifact validation (`genrec_lightning.artifacts`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genrec_lightning.artifacts import (
    META_FILE,
    atomic_dir,
    config_hash,
    is_valid_artifact,
    read_meta,
    write_json_atomic,
)

# ------------------------------------------------------------------------------------------- config_hash


def test_config_hash_ignores_key_order_at_every_level() -> None:
    """Reordering keys (top level and nested) gives the same hash."""
    a = {"dataset": "beauty", "k": {"user": 5, "item": 5}, "seed": 0}
    b = {"seed": 0, "k": {"item": 5, "user": 5}, "dataset": "beauty"}
    assert config_hash(a) == config_hash(b)


@pytest.mark.parametrize(
    "other",
    [
        {"dataset": "sports", "k": {"user": 5, "item": 5}, "seed": 0},  # different string
        {"dataset": "beauty", "k": {"user": 5, "item": 4}, "seed": 0},  # nested value
        {"dataset": "beauty", "k": {"user": 5, "item": 5}, "seed": 1},  # top-level value
        {"dataset": "beauty", "k": {"user": 5, "item": 5}},  # missing key
        {"dataset": "beauty", "k": {"user": 5, "item": 5}, "seed": 0, "extra": None},  # extra key
        {"dataset": "beauty", "k": {"user": 5, "item": 5}, "seed": 0.5},  # int vs float value
    ],
)
def test_config_hash_distinguishes_values(other: dict[str, Any]) -> None:
    """Any change of a value, or an added/removed key, changes the hash."""
    base = {"dataset": "beauty", "k": {"user": 5, "item": 5}, "seed": 0}
    assert config_hash(base) != config_hash(other)


def test_config_hash_treats_tuples_and_lists_alike_but_not_their_contents() -> None:
    """A tuple hashes like the list with the same elements (JSON has no tuple); order still counts."""
    assert config_hash({"dims": (1, 2, 3)}) == config_hash({"dims": [1, 2, 3]})
    assert config_hash({"dims": ((1, 2), [3])}) == config_hash({"dims": [[1, 2], (3,)]})
    assert config_hash({"dims": (1, 2, 3)}) != config_hash({"dims": (3, 2, 1)})
    assert config_hash({"dims": (1, 2, 3)}) != config_hash({"dims": (1, 2)})


def test_config_hash_is_a_stable_hex_prefix_of_the_requested_length() -> None:
    """Same input -> same hash; `length` truncates a longer hash of the same config."""
    config = {"a": 1, "b": [True, None, "x", 2.5]}
    short, long = config_hash(config), config_hash(config, length=40)
    assert short == config_hash(dict(config))
    assert len(short) == 12 and len(long) == 40
    assert long.startswith(short)
    int(long, 16)  # hexadecimal


def test_config_hash_distinguishes_bool_from_int() -> None:
    """`True` and `1` are different settings (JSON `true` vs `1`)."""
    assert config_hash({"flag": True}) != config_hash({"flag": 1})


class _Opaque:
    pass


@pytest.mark.parametrize("value", [_Opaque(), {1, 2}, b"bytes", object()])
def test_config_hash_rejects_unhashable_types(value: Any) -> None:
    """Values with no canonical JSON form raise TypeError, also when nested."""
    with pytest.raises(TypeError):
        config_hash({"x": value})
    with pytest.raises(TypeError):
        config_hash({"outer": {"inner": [1, value]}})


# --------------------------------------------------------------------------------------------- atomic_dir


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `directory`."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_atomic_dir_creates_target_on_success(tmp_path: Path) -> None:
    """Files written in the block end up in the target; no temporary sibling remains."""
    target = tmp_path / "nested" / "artifact"
    with atomic_dir(target) as tmp:
        assert tmp != target and not target.exists()
        (tmp / "a.txt").write_text("alpha")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert _snapshot(target) == {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["artifact"]


def test_atomic_dir_replaces_existing_target_on_success(tmp_path: Path) -> None:
    """A successful block replaces the old directory wholesale (old files do not linger)."""
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _snapshot(target) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_atomic_dir_failure_leaves_existing_target_untouched(tmp_path: Path) -> None:
    """An exception in the block propagates, keeps the old target intact and removes the temp dir."""
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "keep.txt").write_text("previous")
    (target / "sub").mkdir()
    (target / "sub" / "data.bin").write_bytes(b"123")
    before = _snapshot(target)

    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "keep.txt").write_text("half-written")
        (tmp / "partial.txt").write_text("x")
        raise RuntimeError("boom")

    assert _snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_atomic_dir_failure_without_previous_target_creates_nothing(tmp_path: Path) -> None:
    """With no previous target, a failing block leaves neither target nor temp dir."""
    target = tmp_path / "artifact"
    with pytest.raises(KeyError), atomic_dir(target) as tmp:
        (tmp / "f.txt").write_text("x")
        raise KeyError("missing")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ meta.json bookkeeping


def test_write_json_atomic_round_trips_through_read_meta(tmp_path: Path) -> None:
    """`read_meta` returns what was written (tuples as lists); no temp file is left behind."""
    data = {"config": {"b": (1, 2), "a": "x", "nested": {"f": 0.25, "n": None, "t": True}}, "stage": "prep"}
    write_json_atomic(tmp_path / META_FILE, data)
    expected = {
        "config": {"a": "x", "b": [1, 2], "nested": {"f": 0.25, "n": None, "t": True}},
        "stage": "prep",
    }
    assert read_meta(tmp_path) == expected
    assert [p.name for p in tmp_path.iterdir()] == [META_FILE]

    # overwriting replaces the content
    write_json_atomic(tmp_path / META_FILE, {"config": {}})
    assert read_meta(tmp_path) == {"config": {}}
    assert [p.name for p in tmp_path.iterdir()] == [META_FILE]


def test_write_json_atomic_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """An unserialisable value raises before the rename: the previous file survives, no temp file."""
    path = tmp_path / META_FILE
    write_json_atomic(path, {"config": {"a": 1}})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"config": {"a": object()}})
    assert read_meta(tmp_path) == {"config": {"a": 1}}
    assert [p.name for p in tmp_path.iterdir()] == [META_FILE]


def test_read_meta_is_none_for_missing_directory_or_file(tmp_path: Path) -> None:
    """Absent directory or a directory without meta.json -> None."""
    assert read_meta(tmp_path / "nope") is None
    (tmp_path / "empty").mkdir()
    assert read_meta(tmp_path / "empty") is None


def _make_artifact(directory: Path, config: dict[str, Any], files: tuple[str, ...]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        (directory / name).write_text(name)
    write_json_atomic(directory / META_FILE, {"config": config})


CONFIG: dict[str, Any] = {"dataset": "beauty", "min_user": 5, "dims": (8, 16)}
FILES = ("sequences.npz", "items.parquet")


def test_is_valid_artifact_true_when_complete_and_config_matches(tmp_path: Path) -> None:
    """Complete directory + same config (even with reordered keys / list for tuple) -> True."""
    _make_artifact(tmp_path / "a", CONFIG, FILES)
    assert is_valid_artifact(tmp_path / "a", CONFIG, FILES)
    assert is_valid_artifact(tmp_path / "a", {"dims": [8, 16], "min_user": 5, "dataset": "beauty"}, FILES)
    assert is_valid_artifact(tmp_path / "a", CONFIG, ())


@pytest.mark.parametrize("missing", FILES)
def test_is_valid_artifact_false_when_a_listed_file_is_missing(tmp_path: Path, missing: str) -> None:
    """Deleting any listed file invalidates the artifact."""
    _make_artifact(tmp_path / "a", CONFIG, FILES)
    (tmp_path / "a" / missing).unlink()
    assert not is_valid_artifact(tmp_path / "a", CONFIG, FILES)


def test_is_valid_artifact_false_when_a_listed_file_is_a_directory(tmp_path: Path) -> None:
    """A directory with the name of a listed file does not count as that file."""
    _make_artifact(tmp_path / "a", CONFIG, FILES[:1])
    (tmp_path / "a" / FILES[1]).mkdir()
    assert not is_valid_artifact(tmp_path / "a", CONFIG, FILES)


@pytest.mark.parametrize(
    "other",
    [
        {"dataset": "sports", "min_user": 5, "dims": (8, 16)},
        {"dataset": "beauty", "min_user": 4, "dims": (8, 16)},
        {"dataset": "beauty", "min_user": 5, "dims": (16, 8)},
        {"dataset": "beauty", "min_user": 5},
        {"dataset": "beauty", "min_user": 5, "dims": (8, 16), "seed": 0},
    ],
)
def test_is_valid_artifact_false_when_config_differs(tmp_path: Path, other: dict[str, Any]) -> None:
    """An artifact built from another config is not valid for this one."""
    _make_artifact(tmp_path / "a", CONFIG, FILES)
    assert not is_valid_artifact(tmp_path / "a", other, FILES)


def test_is_valid_artifact_false_without_meta(tmp_path: Path) -> None:
    """All files present but no meta.json (e.g. an incomplete build) -> False; absent dir -> False."""
    (tmp_path / "a").mkdir()
    for name in FILES:
        (tmp_path / "a" / name).write_text(name)
    assert not is_valid_artifact(tmp_path / "a", CONFIG, FILES)
    assert not is_valid_artifact(tmp_path / "absent", CONFIG, FILES)
