"""Temperature annealing for soft quantisers (UniGRec eq. 16 and two smoother shapes).

The temperature is a pure function of `trainer.global_step` (or `current_epoch`), recomputed before
every training batch, so a resumed run continues exactly where it stopped and no state is saved.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import MisconfigurationException

Schedule = Literal["linear", "cosine", "exponential"]


def anneal(progress: float, start: float, end: float, schedule: Schedule = "linear") -> float:
    """Value at `progress` in [0, 1] (clamped) going from `start` to `end`."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return start - p * (start - end)
    if schedule == "cosine":
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * p))
    if schedule == "exponential":
        return start * (end / start) ** p
    raise ValueError(f"unknown schedule {schedule!r}; use linear, cosine or exponential")


class TemperatureAnnealing(L.Callback):
    """Anneals `pl_module.temperature` from `tau_max` to `tau_min` and logs it as `train/temperature`."""

    def __init__(
        self,
        tau_max: float = 0.01,
        tau_min: float = 0.001,
        schedule: Schedule = "linear",
        interval: Literal["step", "epoch"] = "step",
        total: int | None = None,
    ) -> None:
        """
        Args:
            tau_max: temperature at the start (UniGRec: 0.01 or 0.05).
            tau_min: temperature at the end and after it (UniGRec: 0.001).
            schedule: `linear` (UniGRec eq. 16), `cosine` or `exponential` (geometric).
            interval: anneal over optimiser steps (`trainer.global_step`) or epochs.
            total: steps/epochs of the whole schedule (None: the run's length,
                `trainer.estimated_stepping_batches` or `max_epochs`).
        """
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        if total is not None and total < 1:
            raise ValueError(f"total must be a positive number of {interval}s, got {total}")
        self.tau_max = tau_max
        self.tau_min = tau_min
        self.schedule = schedule
        self.interval = interval
        self.total = total
        anneal(0.0, tau_max, tau_min, schedule)  # validate the schedule name early

    def _length(self, trainer: L.Trainer) -> int:
        if self.total is not None:
            return self.total
        length = trainer.estimated_stepping_batches if self.interval == "step" else trainer.max_epochs
        if length is None or length < 0 or math.isinf(length):
            raise MisconfigurationException(
                f"TemperatureAnnealing cannot tell the run's length in {self.interval}s; "
                f"set trainer.max_{self.interval}s or the callback's `total`"
            )
        return max(int(length), 1)

    def temperature(self, trainer: L.Trainer) -> float:
        """The temperature for the current position of the trainer."""
        position = trainer.global_step if self.interval == "step" else trainer.current_epoch
        return anneal(position / self._length(trainer), self.tau_max, self.tau_min, self.schedule)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        try:
            _ = pl_module.temperature
        except AttributeError as err:
            raise MisconfigurationException(
                f"TemperatureAnnealing needs a module with a soft quantiser ({err}); "
                "use SoftResidualQuantizer or remove the callback"
            ) from err

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.temperature = self.temperature(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        tau = self.temperature(trainer)
        pl_module.temperature = tau
        pl_module.log("train/temperature", tau, on_step=True, on_epoch=False)
