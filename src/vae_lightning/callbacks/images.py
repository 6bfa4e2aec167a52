"""Reconstructions of fixed validation images and decodings of fixed prior samples."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from pydantic import NonNegativeInt, PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, encode, is_conditional


@dataclass(eq=False)
class ReconstructionsAndSamples(VisualCallback):
    """Logs ``val/reconstructions`` (inputs above reconstructions) and ``val/samples``.

    The same validation images and the same prior draws z ~ p(z) are used every epoch,
    so the grids show progress rather than sampling noise. Reconstructions decode the
    posterior mean.

    For a conditional network (the conditional VAE) the images are encoded and decoded with
    their labels, and ``val/samples`` has one row per class: the same ``samples_per_class``
    prior draws in every row, decoded with that row's label, so a column keeps its code (the
    style) while the rows change the class.
    """

    num_images: PositiveInt = 8  # inputs above their reconstructions
    num_samples: PositiveInt = 64  # the same prior draws every epoch
    seed: NonNegativeInt = 0
    samples_per_class: PositiveInt = 8  # conditional networks: columns of val/samples

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        step = trainer.global_step
        mu, _ = encode(pl_module, self.images, self.labels)
        inputs = self.images.float().cpu()
        reconstructions = decode(pl_module, mu, self.labels)
        grid = make_grid(torch.cat([inputs, reconstructions]), nrow=len(inputs))
        writer.add_image("val/reconstructions", grid, step)
        generator = torch.Generator().manual_seed(self.seed)
        if is_conditional(pl_module):
            columns, classes = self.samples_per_class, pl_module.net.num_classes
            z = pl_module.net.sample_prior(columns, generator).repeat(classes, 1)
            labels = torch.arange(classes).repeat_interleave(columns)
            samples = make_grid(decode(pl_module, z, labels), nrow=columns)
        else:
            z = pl_module.net.sample_prior(self.num_samples, generator)  # flows: prior samples
            samples = make_grid(decode(pl_module, z), nrow=8)
        writer.add_image("val/samples", samples, step)
