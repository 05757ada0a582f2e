"""Console output of the `genrec` command: our progress and results, library noise left out.

Without this, `logging.basicConfig(level=INFO)` lets every library's INFO chatter through (faiss's
loader reports each instruction set it fails to load), Lightning prints advertising tips on
every fit, and a torch deprecation that Lightning itself triggers shows on every run. Genuine
warnings, from us or from a library, still show.
"""

from __future__ import annotations

import logging
import warnings

#: Our package logger: progress and results at INFO.
PACKAGE_LOGGER = "genrec_lightning"
#: Libraries whose INFO output is noise on our console (faiss: "Could not load library with AVX2
#: support ... ModuleNotFoundError" for every missing build; sentence-transformers: model loading).
QUIET_LOGGERS: tuple[str, ...] = ("faiss", "sentence_transformers", "transformers", "huggingface_hub")
#: Where Lightning's `rank_zero_info` logs (the logger depends on which Lightning package is imported).
LIGHTNING_INFO_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)
#: Lightning INFO lines that tell the user nothing, with no switch but its loggers: advertising
#: ("💡 Tip: ... install litlogger / litmodels", every Trainer) and the note that the training
#: loader was built early to count the run's steps (every fit whose schedule or curriculum
#: reads `estimated_stepping_batches`, i.e. all of ours).
LIGHTNING_NOISE_PREFIXES: tuple[str, ...] = (
    "💡 Tip:",
    "Loading `train_dataloader` to estimate number of stepping batches",
)
#: Recent torch deprecates instantiating `LeafSpec`; Lightning's CombinedLoader
#: (lightning/pytorch/utilities/_pytree.py) still does on every fit/validate/test. Not ours to fix.
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
PYTREE_MODULE = r"lightning\.pytorch\.utilities\._pytree|pytorch_lightning\.utilities\._pytree"


class _DropLightningNoise(logging.Filter):
    """Drop Lightning's noise records and keep every other Lightning message (GPU used, fit stopped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE_PREFIXES)


class _ConsoleFormatter(logging.Formatter):
    """Our messages as is (they are the command's output); others named, so their source is clear."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.name == PACKAGE_LOGGER or record.name.startswith(PACKAGE_LOGGER + "."):
            return message
        return f"{record.levelname} {record.name}: {message}"


_NOISE_FILTER = _DropLightningNoise()


def configure_output(verbose: bool = False) -> None:
    """Set up console logging and warning filters for a `genrec` command (call once, at start).

    Args:
        verbose: show everything libraries log at INFO (faiss loading, Lightning tips) and the
            known-harmless deprecation, e.g. to debug an installation.
    """
    root = logging.getLogger()
    if not root.handlers:  # like basicConfig: keep an embedding application's (or pytest's) handlers
        handler = logging.StreamHandler()
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if verbose:
            logger.removeFilter(_NOISE_FILTER)
        else:
            logger.addFilter(_NOISE_FILTER)  # a no-op when already there
    if not verbose:
        warnings.filterwarnings(
            "ignore", message=PYTREE_DEPRECATION, category=FutureWarning, module=PYTREE_MODULE
        )


__all__ = ["configure_output"]
