"""Console output of `genrec`: our progress and results once, no library noise, real warnings kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from genrec_lightning.modules.tokenizer import format_id_stats

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: The header line of `format_id_stats`' per-level table.
TABLE_HEADER = re.compile(r"^level\s+usage\s+entropy", re.MULTILINE)


def python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter (the console setup is process-wide), with conftest.HashEncoder importable."""
    paths = [str(TESTS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def tiny_rqkmeans(tmp: Path, cache: Path) -> Path:
    """configs/tokenizers/rqkmeans.yaml on 8-d hash embeddings, shrunk to seconds.

    2048 codes > 1,349 items: level 1 gives every distinct embedding its own code, so level 2 (all
    residuals zero) uses one code: entropy -0.0, the value that printed "-0.000".
    The `Compile` callback has nothing to compile in a k-means tokenizer and says so: a genuine
    warning of ours that must still show.
    """
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "configs/tokenizers/rqkmeans.yaml").read_text())
    data = cfg["data"]["init_args"]["data"]["init_args"]
    data["cache_dir"] = str(cache)
    data["encoder"] = {"class_path": "conftest.HashEncoder", "init_args": {"dim": 8}}
    cfg["model"]["init_args"]["tokenizer"]["init_args"].update({"num_levels": 2, "codebook_size": 2048})
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    cfg["trainer"]["callbacks"] = [{"class_path": "genrec_lightning.callbacks.Compile"}]
    path = tmp / "rqkmeans_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tokenize_run(tmp_path_factory: pytest.TempPathFactory, ml100k_cache: Path) -> tuple[str, str]:
    """stdout and stderr of one `genrec tokenize` that fits RQ-KMeans (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("output")
    config = tiny_rqkmeans(tmp, ml100k_cache)
    done = python(["-m", "genrec_lightning", "tokenize", "--config", str(config)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_tokenize_shows_our_progress_and_warnings(tokenize_run: tuple[str, str]) -> None:
    out, err = tokenize_run
    assert "Building semantic IDs for ml-100k" in err and "Fitting RQKMeans on" in err
    assert re.search(r"Semantic IDs written to .* \([\d,]+ items, collision rate before dedup", err)
    assert "Compile: TokenizerModule names nothing to compile" in err  # our warning is kept
    assert "semantic IDs: " in out


def test_tokenize_has_no_library_noise(tokenize_run: tuple[str, str]) -> None:
    """faiss's loader INFO, Lightning's tips and the torch pytree deprecation are gone."""
    text = "\n".join(tokenize_run)
    assert "Could not load library" not in text and "Loading faiss" not in text
    assert "Tip:" not in text and "litlogger" not in text and "litmodels" not in text
    assert "LeafSpec" not in text and "_pytree" not in text


def test_rqkmeans_fit_has_no_optimizer_warning(tokenize_run: tuple[str, str]) -> None:
    assert "configure_optimizers" not in "\n".join(tokenize_run)


def test_statistics_table_printed_once_without_negative_zero(tokenize_run: tuple[str, str]) -> None:
    out, err = tokenize_run
    assert len(TABLE_HEADER.findall(out)) == 1 and not TABLE_HEADER.search(err)
    assert "-0.000" not in out
    assert re.search(r"^\s+2\s+\S+%\s+0\.000\s+0\.000\s", out, re.MULTILINE), out  # the one-code level


def test_format_id_stats_prints_negative_zero_as_zero() -> None:
    stats = {
        "num_items": 3,
        "num_levels": 2,
        "codebook_sizes": [4, 4],
        "dedup": "none",
        "collision_rate": 0.0,
        "colliding_items": 0,
        "max_group_size": 1,
        "unique_ratio": 1.0,
        "usage": [0.75, 0.25],
        "entropy": [1.0986, -0.0],
        "normalized_entropy": [0.7925, -0.0],
        "filter_ratio": [0.6667, 0.0],
        "purity_gain": [0.5, -1e-9],
    }
    table = format_id_stats(stats)
    assert "-0.000" not in table
    *_, level2, warning = table.splitlines()  # level 2 uses 1 of 4 codes: flagged below the table
    assert level2.split() == ["2", "25.00%", "0.000", "0.000", "0.00%", "0.000"]
    assert warning.startswith("warning: level 2 uses 25.0% of its 4 codes (1)")
    negative = format_id_stats({**stats, "purity_gain": [0.5, -0.25]})
    assert negative.splitlines()[-2].split()[-1] == "-0.250"  # a real negative keeps its sign


#: The console as `genrec` leaves it (its main() sets it up, here for `--version`), then one
#: message of each kind: ours, library noise, and genuine warnings from us, a library and Python.
OUTPUT_SCRIPT = r"""
import logging
import warnings

from lightning.pytorch.utilities._pytree import _tree_flatten
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils._pytree import LeafSpec

from genrec_lightning.cli import main

main(["--version"])
logging.getLogger("genrec_lightning.pipeline.tokenize").info("our progress line")
logging.getLogger("genrec_lightning.data").warning("our warning line")
logging.getLogger("faiss.loader").info("Could not load library with AVX2 support due to: ...")
logging.getLogger("faiss.loader").error("a faiss error line")
rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
rank_zero_info("GPU available: False, used: False")
rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
_tree_flatten(1)  # Lightning's own LeafSpec() call: the known-harmless deprecation
LeafSpec()  # the same deprecation from code that is not Lightning's: still shown
warnings.warn("a genuine user warning", UserWarning)
"""


def test_console_setup_keeps_real_warnings_and_drops_noise() -> None:
    done = python(["-c", OUTPUT_SCRIPT], cwd=TESTS)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert done.stdout.startswith("genrec_lightning ")
    assert "our progress line" in err and "our warning line" in err
    assert "a faiss error line" in err
    assert "Could not load library" not in err
    assert "Tip:" not in err and "GPU available: False, used: False" in err
    assert "to estimate number of stepping batches" not in err
    assert err.count("isinstance(treespec, LeafSpec)") == 1  # from LeafSpec() here, not Lightning's
    assert "lightning/pytorch/utilities/_pytree.py" not in err
    assert "a genuine user warning" in err
