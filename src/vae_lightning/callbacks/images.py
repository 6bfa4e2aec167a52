"""Reconstructions of fixed validation images and decodings of fixed prior samples."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the run's TensorBoard logger, if there is one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ReconstructionsAndSamples(L.Callback):
    """Logs ``val/reconstructions`` (inputs above reconstructions) and ``val/samples``.

    The same validation images and the same prior draws z ~ N(0, I) are used every epoch,
    so the grids show progress rather than sampling noise.
    """

    def __init__(
        self, num_images: int = 8, num_samples: int = 64, every_n_epochs: int = 1, seed: int = 0
    ) -> None:
        self.num_images, self.num_samples = num_images, num_samples
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.inputs: Tensor | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.inputs is None and batch_idx == 0:
            self.inputs = batch[0][: self.num_images].detach().clone()

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        due = trainer.current_epoch % self.every_n_epochs == 0
        if trainer.sanity_checking or not trainer.is_global_zero or writer is None or not due:
            return
        step = trainer.global_step
        if self.inputs is not None:
            mu, _ = pl_module.net.encode(self.inputs)
            recon = pl_module.decode_mean(mu)
            grid = make_grid(torch.cat([self.inputs, recon]).float().cpu(), nrow=len(self.inputs))
            writer.add_image("val/reconstructions", grid, step)
        generator = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.num_samples, pl_module.net.latent_dim, generator=generator)
        samples = pl_module.decode_mean(z.to(pl_module.device))
        writer.add_image("val/samples", make_grid(samples.float().cpu(), nrow=8), step)
