"""Callbacks that inject faults into real runs at a chosen step (tests only).

They are added from the command line (``+callbacks.pause._target_=fault_injection.PauseAtStep``)
with ``tests/`` on PYTHONPATH, so the code under test runs unmodified.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vae_lightning.data.loaders import PreparedBatches


class PauseAtStep(L.Callback):
    """At the end of training step ``step``, write ``marker`` and wait until a signal
    arrives (up to ``timeout`` s): the test kills the process at a known point mid-epoch.
    Computation is untouched, so the run's numbers equal those of an unpaused run."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step, self.marker, self.timeout = step, Path(marker), timeout

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


class SignalAtStep(L.Callback):
    """Sends ``signum`` to this very process at the end of training step ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGINT, during: str = "train") -> None:
        self.step, self.signum, self.during = step, signum, during

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self.during == "train" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self.during == "test":
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        fire = self.during == "validation" and trainer.global_step == self.step
        if fire and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signum)


class NaNBatches(L.Callback):
    """Replaces the images of ``count`` training batches from step ``start`` with NaN, as
    corrupt batches would."""

    def __init__(self, start: int, count: int = 1) -> None:
        self.start, self.count = start, count

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, PreparedBatches):
            if self._poisons(trainer.global_step):
                batch[0].fill_(torch.nan)
            return
        # A group (data.steps_per_batch): its batches are prepared as their steps come.
        steps, prepare = (
            iter(range(trainer.global_step, trainer.global_step + len(batch))),
            batch.prepare,
        )

        def prepare_then_poison(raw: Any) -> Any:
            images, labels = prepare(raw)
            if self._poisons(next(steps)):
                images.fill_(torch.nan)
            return images, labels

        batch.prepare = prepare_then_poison

    def _poisons(self, step: int) -> bool:
        return self.start <= step < self.start + self.count
