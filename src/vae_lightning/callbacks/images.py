"""Reconstructions of fixed validation images and decodings of fixed prior samples."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from pydantic import NonNegativeInt, PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, encode


@dataclass(eq=False)
class ReconstructionsAndSamples(VisualCallback):
    """Logs ``val/reconstructions`` (inputs above reconstructions) and ``val/samples``.

    The same validation images and the same prior draws z ~ p(z) are used every epoch,
    so the grids show progress rather than sampling noise. Reconstructions decode the
    posterior mean.
    """

    num_images: PositiveInt = 8  # inputs above their reconstructions
    num_samples: PositiveInt = 64  # the same prior draws every epoch
    seed: NonNegativeInt = 0

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        step = trainer.global_step
        mu, _ = encode(pl_module, self.images)
        inputs = self.images.float().cpu()
        grid = make_grid(torch.cat([inputs, decode(pl_module, mu)]), nrow=len(inputs))
        writer.add_image("val/reconstructions", grid, step)
        generator = torch.Generator().manual_seed(self.seed)
        z = pl_module.net.sample_prior(self.num_samples, generator)  # flows: prior samples
        writer.add_image("val/samples", make_grid(decode(pl_module, z), nrow=8), step)
