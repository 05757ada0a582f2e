"""`torch.compile` as an opt-in callback: `--trainer.callbacks+=Compile` on any `genrec fit`.

The module names what is worth compiling (`compile_targets()`: the T5 encoder and decoder stacks,
the SASRec/GRU4Rec network, the RQ-VAE MLPs) and each target is compiled in place with
`nn.Module.compile`, so parameter names, checkpoints and the un-compiled code paths (beam search's
incremental decoder, the float32 quantiser) are unchanged. Compilation happens once, lazily, on
the first call; with `dynamic=None` torch recompiles once for a new batch shape, then marks it
dynamic.
"""

from __future__ import annotations

import logging

import lightning.pytorch as L
from torch import nn

log = logging.getLogger(__name__)


def compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` has been called on this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


class Compile(L.Callback):
    """Compile the module's `compile_targets()` with `torch.compile` before training/evaluation."""

    def __init__(
        self,
        backend: str = "inductor",
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
    ) -> None:
        """
        Args:
            backend: torch.compile backend ("inductor"; "eager" checks the graph capture only;
                "aot_eager" adds autograd tracing without code generation).
            mode: inductor mode (None, "reduce-overhead", "max-autotune", ...).
            dynamic: torch.compile `dynamic` (None: recompile once, then dynamic shapes).
            fullgraph: fail on graph breaks instead of falling back to eager between them.
        """
        self.options = {"backend": backend, "mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        targets_of = getattr(pl_module, "compile_targets", None)
        targets = list(targets_of()) if callable(targets_of) else []
        if not targets:
            log.warning("Compile: %s names nothing to compile; running eagerly", type(pl_module).__name__)
            return
        for target in targets:
            if not compiled(target):
                target.compile(**self.options)
        log.info(
            "Compile: %d module(s) of %s compiled with %s",
            len(targets), type(pl_module).__name__, self.options,
        )  # fmt: skip
