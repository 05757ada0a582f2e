"""Exact resume: `last.ckpt` always holds the last state, also when a run is stopped by SIGTERM.

Lightning 2.6's `ModelCheckpoint(save_last=True)` refreshes `last.ckpt` only when it saves a
top-k checkpoint, so a run whose final steps are not followed by a validation (or whose last
validation did not improve) leaves a `last.ckpt` several epochs old, and a resumed run silently
repeats them. On SIGTERM (kill, `timeout`, docker stop, SLURM preemption) Lightning stops the
loop at a batch boundary and saves nothing. `genrec` adds `ResumeState` to every `fit`:

* after every validation of a fit, at the end of training, and when a SIGTERM stops it,
  `last.ckpt` is written into the checkpoint callback's directory unless it already holds the
  current step, so a run killed without warning (SIGKILL, out of memory, a lost machine) loses
  at most the steps since its last validation. After a validation that improves the monitored
  metric Lightning then writes it once more, with the new best in its state;
* the checkpoint carries the random states (torch, CUDA, numpy, python) of rank 0, restored when
  training resumes, so dropout draws continue as if the run had never stopped. Together with the
  (seed, epoch)-ordered training loader this makes a resumed single-process run repeat the
  uninterrupted one exactly. Under DDP the other ranks keep their freshly seeded streams.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where this run's `last.ckpt` lives: the checkpoint callback's directory (None without one)."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class ResumeState(L.Callback):
    """Keeps `last.ckpt` at the final (or interrupted) step and carries the RNG states across resume.

    Args:
        save_on_sigterm: write `last.ckpt` when SIGTERM stops the run (the checkpoint resumes
            inside the epoch, at the batch where it stopped).
    """

    def __init__(self, save_on_sigterm: bool = True) -> None:
        self.save_on_sigterm = save_on_sigterm
        self._rng_to_restore: dict[str, Any] | None = None
        #: The checkpoint written when SIGTERM stopped the run (read by the CLI for its message).
        self.interrupted_checkpoint: Path | None = None
        self._last_saved_step = -1  # the step of this callback's own latest last.ckpt

    # ------------------------------------------------------------------ random states
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied in on_train_start: model building and setup between here and the first step
        # may still draw random numbers, and the saved states belong to the first resumed step.
        self._rng_to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._rng_to_restore = self._rng_to_restore, None
        if state is None or trainer.global_rank != 0:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    # ------------------------------------------------------------------ last.ckpt
    def _save_last(self, trainer: L.Trainer) -> Path | None:
        path = last_checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if path is None or trainer.fast_dev_run or not isinstance(callback, ModelCheckpoint):
            return None
        current = callback.last_model_path == str(path)
        if current and trainer.global_step in (_saved_step(callback), self._last_saved_step):
            return path
        callback.last_model_path = str(path)  # part of the state written below
        # A full checkpoint (a resume needs the optimiser and loops); saying so keeps Lightning from
        # logging that it defaulted to one at every validation.
        trainer.save_checkpoint(path, weights_only=False)
        self._last_saved_step = trainer.global_step
        return path

    def _keep_last(self, trainer: L.Trainer) -> None:
        """Refresh last.ckpt where the checkpoint callback asks for one (`save_last`)."""
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            self._save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last) and
        # after EarlyStopping's, whose updated patience count is part of the state written here.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._keep_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep_last(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning raises SIGTERMException at a batch boundary on every rank at once (rank 0
        # broadcasts it), so the state is consistent and the collective save cannot hang.
        if not self.save_on_sigterm or not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self.interrupted_checkpoint = self._save_last(trainer)
        if self.interrupted_checkpoint is not None:
            rank_zero_info(f"SIGTERM: saved step {trainer.global_step} to {self.interrupted_checkpoint}")


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    # As a tensor and plain numbers, so the checkpoint still loads with weights_only=True.
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def _saved_step(callback: ModelCheckpoint) -> int:
    # ModelCheckpoint records the step of its latest save (private in Lightning 2.6, hence getattr).
    return int(getattr(callback, "_last_global_step_saved", -1))


__all__ = ["ResumeState", "last_checkpoint_path"]
