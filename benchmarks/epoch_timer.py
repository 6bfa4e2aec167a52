"""A Lightning callback timing training epochs, for benchmarks/throughput.py (path b and c)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def synchronize(pl_module: L.LightningModule) -> None:
    """Waits for the module's device: a clock read after this counts its queued work."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


def batch_images(batch: Any) -> int:
    """Images in a training batch: one batch, or a group of them (data.steps_per_batch)."""
    return getattr(batch, "num_images", None) or len(batch[0])


class EpochTimer(L.Callback):
    """Wall-clock and CPU seconds and image count of every training epoch.

    The clock starts before the epoch's loader iterator is built and stops after its last
    step, with CUDA synchronised at both ends, like the pure loop it is compared with.
    Instances register on the class so the benchmark reads them back after ``train(cfg)``
    built the callback from the config.
    """

    instances: list[EpochTimer] = []

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process, all threads
        self.images: list[int] = []
        self._count, self._start, self._cpu_start = 0, 0.0, 0.0
        EpochTimer.instances.append(self)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module)
        self._count, self._start, self._cpu_start = 0, time.perf_counter(), time.process_time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._count += batch_images(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module)
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)
        self.images.append(self._count)
