"""The project's expected user errors: `genrec` prints one of these as one line and exits non-zero.

Anything raised from here is a problem with the user's files, configs or runs, and its message
names the problem and the fix. Every other exception is a bug and keeps its traceback. The
lowest layer of the package: it imports nothing of ours, so every layer can raise these.
"""

from __future__ import annotations


class GenRecError(Exception):
    """Base of every expected user error (bad input, a missing or corrupted artifact, a bad run)."""


class ConfigError(GenRecError, ValueError):
    """A setting is out of range or inconsistent; raised before any expensive stage starts."""


class RunError(GenRecError, RuntimeError):
    """A run cannot start or resume as asked (no checkpoint to resume, unwritable directory, ...)."""


class CorruptedArtifactError(GenRecError, ValueError):
    """A cached file exists but cannot be read back (truncated, edited, not what its name says)."""


__all__ = ["ConfigError", "CorruptedArtifactError", "GenRecError", "RunError"]
