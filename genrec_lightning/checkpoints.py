"""Finding and vetting checkpoints before a run uses them.

`genrec fit --ckpt_path last` continues the newest run of an experiment (in its own
`version_N` directory), and a checkpoint handed to fit/test/predict is checked against the config
before any stage is built: a checkpoint of another model class, or one trained on other data, is
refused in seconds with a one-line reason instead of a state-dict dump after an RQ-VAE build.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genrec_lightning.errors import RunError
from genrec_lightning.modules.base import DATA_KEY
from genrec_lightning.semantic_ids import ArtifactMismatchError

LAST = "last.ckpt"
_VERSION = re.compile(r"^version_(\d+)$")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents (tensors only, nothing executed), or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist: pass the path of a .ckpt file (or `last`)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a checkpoint, pickled objects
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(
            f"checkpoint {path} cannot be read ({reason}): it is truncated or not a checkpoint"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunError(
            f"{path} is not a Lightning checkpoint (no state_dict): pass a .ckpt written by genrec fit"
        )
    return checkpoint


def version_of(run_dir: Path) -> int | None:
    """N for a `version_N` directory, else None."""
    match = _VERSION.match(run_dir.name)
    return int(match.group(1)) if match else None


def newest_last_checkpoint(save_dir: str | Path, name: str) -> Path | None:
    """`<save_dir>/<name>/version_N/checkpoints/last.ckpt` of the highest N that has one."""
    root = Path(save_dir) / name
    found = [
        (version, path)
        for path in root.glob(f"version_*/checkpoints/{LAST}")
        if (version := version_of(path.parent.parent)) is not None
    ]
    return max(found)[1] if found else None


def run_dir_of(
    checkpoint: Path, save_dir: str | Path, name: str, version: int | str | None = None
) -> Path | None:
    """The run directory under `<save_dir>/<name>` that holds `checkpoint`, if any.

    Without `version` only a numbered `version_N` run counts; with one (an int, or a name such as
    `seed1` as the experiment runner gives) only that run's directory, as TensorBoard names it.
    """
    parent = checkpoint.resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    root = (Path(save_dir) / name).resolve()
    if run.parent != root:
        return None
    if version is None:
        return run if version_of(run) is not None else None
    named = f"version_{version}" if isinstance(version, int) else str(version)
    return run if run.name == named else None


def check_model_class(checkpoint: Mapping[str, Any], path: Path, class_path: str) -> None:
    """Refuse a checkpoint written by another LightningModule class (summarised, not key by key)."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if saved is None or saved == class_path:
        return
    raise RunError(
        f"checkpoint {path} holds a {saved.rsplit('.', 1)[-1]} ({saved}) but the config builds a "
        f"{class_path.rsplit('.', 1)[-1]}: pass the config the checkpoint was trained with"
        + _config_hint(path)
    )


def check_data(checkpoint: Mapping[str, Any], path: Path, identity: Mapping[str, Any]) -> None:
    """Refuse a checkpoint trained on another dataset version (before any stage is built).

    `identity` holds what the configured datamodule is without building anything (dataset name,
    preprocessing hash); keys the checkpoint does not record are not compared.
    """
    saved = checkpoint.get(DATA_KEY)
    if not isinstance(saved, Mapping):
        return
    diff = {k: (saved[k], v) for k, v in identity.items() if k in saved and saved[k] != v}
    if diff:
        changes = ", ".join(f"{k} {a!r} (checkpoint) vs {b!r} (config)" for k, (a, b) in diff.items())
        raise ArtifactMismatchError(
            f"checkpoint {path} was trained on other data ({changes}): use the data settings it was "
            "trained with" + _config_hint(path)
        )


def weights_mismatch(err: RuntimeError, path: Path, model: str) -> RunError | None:
    """One line for torch's key-by-key dump when a checkpoint's weights do not fit the model (a
    checkpoint of another architecture that did not record its class); None for other errors."""
    text = str(err)
    if not text.startswith("Error(s) in loading state_dict"):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = (lines[1] if len(lines) > 1 else lines[0])[:120]
    return RunError(
        f"checkpoint {path} does not fit the {model} the config builds ({detail}...): pass the config "
        "it was trained with" + _config_hint(path)
    )


def _config_hint(path: Path) -> str:
    for candidate in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
        if candidate.is_file():
            return f" (they are in {candidate})"
    return ""


__all__ = [
    "LAST",
    "check_data",
    "check_model_class",
    "newest_last_checkpoint",
    "read_checkpoint",
    "run_dir_of",
    "version_of",
    "weights_mismatch",
]
