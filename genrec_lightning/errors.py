"""The project's expected user errors: `genrec` prints one of these as one line and exits non-zero.

Anything raised from here is a problem with the user's files, configs or runs, and its message
names the problem and the fix. Every other exception is a bug and keeps its traceback. The
lowest layer of the package: it imports nothing of ours, so every layer can raise these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class GenRecError(Exception):
    """Base of every expected user error (bad input, a missing or corrupted artifact, a bad run)."""


class ConfigError(GenRecError, ValueError):
    """A setting is out of range or inconsistent; raised before any expensive stage starts."""


class RunError(GenRecError, RuntimeError):
    """A run cannot start or resume as asked (no checkpoint to resume, unwritable directory, ...)."""


class CorruptedArtifactError(GenRecError, ValueError):
    """A cached file exists but cannot be read back (truncated, edited, not what its name says)."""


def user_error_in(error: BaseException | None) -> GenRecError | None:
    """The GenRecError behind `error`, if any. Config libraries (jsonargparse) re-raise what a
    constructor raised as their own error with a dump of the config; the original stays chained."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, GenRecError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def user_errors_unwrapped() -> Iterator[None]:
    """Re-raise a GenRecError that another library wrapped (instantiating a config) as itself."""
    try:
        yield
    except Exception as err:
        found = user_error_in(err)
        if found is None or found is err:
            raise
        raise found from None


__all__ = [
    "ConfigError",
    "CorruptedArtifactError",
    "GenRecError",
    "RunError",
    "user_error_in",
    "user_errors_unwrapped",
]
