"""Cached artifacts: config hashes, atomic writes and `meta.json` bookkeeping.

Every stage writes its output into a directory named after the hash of the configuration it was
built from, plus a `meta.json` holding that configuration. A reader checks the stored
configuration against the one it expects, so an artifact built from another config is rebuilt,
never silently reused, and a directory only appears once it is complete (write to a temporary
sibling, then rename), so nothing half-written is ever read back. Artifacts get the permissions a
plain `mkdir`/`open` would give (the process umask decides), so a shared cache stays readable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from genrec_lightning.errors import CorruptedArtifactError

META_FILE = "meta.json"


def _canonical(obj: Any) -> Any:
    """Turn `obj` into plain JSON types with a deterministic order (tuples become lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot hash a config value of type {type(obj).__name__}: {obj!r}")


def config_hash(config: Mapping[str, Any], length: int = 12) -> str:
    """Short stable hash of a JSON-like configuration (key order does not matter)."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checksums in meta.json files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identity of an input file by its name and bytes, so changed raw files rebuild caches.

    Content, not modification time: installing the embedded data wheel or copying a raw file to
    another machine stamps a new mtime on the same bytes, and an mtime in the data hash made every
    fresh machine's dataset "different data" (committed semantic IDs refused, `genrec compare`
    refusing runs of the same data). The digest is memoised per (file, size, mtime) within a
    process, so large raw files are read once.
    """
    p = Path(path)
    st = p.stat()
    return {
        "name": p.name,
        "size": st.st_size,
        "sha256": _content_digest(str(p.resolve()), st.st_size, st.st_mtime_ns),
    }


@functools.lru_cache(maxsize=256)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """`sha256_of(path)`; size and mtime are part of the memo key so a rewritten file is re-read."""
    return sha256_of(path)


def process_umask() -> int:
    """The process umask, read without changing it where the OS allows (/proc on Linux).

    Setting and restoring it is the portable fallback; the short window where it is changed could
    give a file created by another thread the wrong mode, hence the /proc read first.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def corrupted_artifact(path: str | Path, directory: str | Path, problem: str) -> CorruptedArtifactError:
    """The error for a cached file that exists but cannot be read back: what is wrong and the way out."""
    return CorruptedArtifactError(
        f"{path} {problem}: delete the directory {directory} and it is rebuilt on the next run"
    )


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block finishes.

    On error the temporary directory is removed and `target` (if it existed) is left untouched.
    The directory gets the mode a plain mkdir would (mkdtemp makes it 0700 whatever the umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~process_umask())
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that replaces `path` only if the block finishes (removed on error).

    The file gets the mode a plain open would (mkstemp makes it 0600 whatever the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~process_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(_canonical(data), f, indent=2, sort_keys=True)
        f.write("\n")


def read_meta(directory: str | Path) -> dict[str, Any] | None:
    """The `meta.json` of an artifact directory, or None when the directory is absent or incomplete.

    A meta.json that is not a JSON object (truncated, edited by hand) raises `CorruptedArtifactError`
    naming the file, instead of a bare JSON error from deep inside a stage.
    """
    meta = Path(directory) / META_FILE
    if not meta.is_file():
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            record = json.load(f)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise corrupted_artifact(meta, directory, f"is not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise corrupted_artifact(meta, directory, f"holds a JSON {type(record).__name__}, not an object")
    return record


def is_valid_artifact(directory: str | Path, config: Mapping[str, Any], files: tuple[str, ...]) -> bool:
    """True when `directory` holds every file in `files` and was built from exactly `config`."""
    meta = read_meta(directory)
    if meta is None or meta.get("config") != _canonical(config):
        return False
    return all((Path(directory) / name).is_file() for name in files)
