"""Paths a and b of throughput.py in one process, alternating in short blocks of steps.

This VM's speed drifts by 10-30 % from one minute to the next, more than the framework costs
(see RESULTS.md), so two processes timed one after the other compare two machines as much as
two loops. Here vae-train (path b) runs as usual, and every ``block`` training steps this
callback runs as many full batches of the pure loop (path a: its own network and fused Adam, the
same gather, binarization and objective) on the same training images, timing both. Each
pair of blocks is a few seconds apart, so a drift falls on both alike.

The Lightning block is the wall time between the end of one pure block and the end of the
Lightning batch that completes ``block`` optimizer steps after it (inside this callback's
``on_train_batch_end``; with data.steps_per_batch K, a batch holds K steps), so every
Lightning cost is counted once per cycle: fetch, hooks, callbacks, logging, the step itself.
Blocks cut short by an epoch's end are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

# benchmarks/ is on sys.path: the script's folder.
from epoch_timer import batch_images, synchronize
from torch import Tensor

# Builds path a's step for the training images (uint8, on the device): step(index) trains on
# images[index]. Set by throughput.py before it starts vae-train (configs cannot carry it).
PureStepFactory = Callable[[Tensor], Callable[[Tensor], None]]


class InterleavedPureLoop(L.Callback):
    """Times ``block`` vae-train steps, then as many pure-loop steps, and so on.

    ``pairs`` holds one ``(epoch, lightning_s, lightning_images, pure_s, pure_images)`` per
    complete cycle.
    """

    make_pure_step: PureStepFactory | None = None
    instances: list[InterleavedPureLoop] = []

    def __init__(self, block: int = 50, seed: int = 0) -> None:
        self.block = block
        self.generator = torch.Generator().manual_seed(seed)
        self.pairs: list[tuple[int, float, int, float, int]] = []
        self._pure_step: Callable[[Tensor], None] | None = None
        self._images_uint8 = torch.empty(0, dtype=torch.uint8)  # the training split, at fit
        self._batch_size = 0
        self._order: list[Tensor] = []  # the pure loop's remaining batches (as indices)
        self._start, self._images, self._steps = 0.0, 0, 0
        InterleavedPureLoop.instances.append(self)

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        synchronize(pl_module)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if InterleavedPureLoop.make_pure_step is None:
            raise RuntimeError("set InterleavedPureLoop.make_pure_step before training")
        self._images_uint8 = trainer.datamodule.splits["train"][0].to(pl_module.device)
        self._batch_size = trainer.datamodule.batch_size
        self._pure_step = InterleavedPureLoop.make_pure_step(self._images_uint8)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images, self._steps = self._now(pl_module), 0, 0

    def _next_index(self) -> Tensor:
        """The pure loop's next batch: full batches of its own shuffles, one after another."""
        if not self._order:
            size = len(self._images_uint8)
            order = torch.randperm(size, generator=self.generator)
            order = order[: size - size % self._batch_size].to(self._images_uint8.device)
            self._order = list(order.split(self._batch_size))[::-1]
        return self._order.pop()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        images = batch_images(batch)
        self._images += images
        self._steps += -(-images // self._batch_size)  # K in a group of K
        if self._steps < self.block:
            return
        lightning_end = self._now(pl_module)
        # As many full batches as the Lightning block trained on: the same work on both sides.
        indices = [self._next_index() for _ in range(self._images // self._batch_size)]
        pure_start = self._now(pl_module)
        for index in indices:
            self._pure_step(index)
        pure_end = self._now(pl_module)
        self.pairs.append(
            (
                trainer.current_epoch,
                lightning_end - self._start,
                self._images,
                pure_end - pure_start,
                len(indices) * self._batch_size,
            )
        )
        self._start, self._images, self._steps = self._now(pl_module), 0, 0
