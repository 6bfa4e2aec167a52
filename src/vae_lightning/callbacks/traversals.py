"""Latent traversals: one latent dimension at a time, the most informative first."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, encode
from vae_lightning.models import gaussian
from vae_lightning.models.latent import traversal_latents


@dataclass(eq=False)
class LatentTraversals(VisualCallback):
    """Logs ``val/traversals``: row k varies one latent dimension over [-limit, limit].

    The other dimensions stay at the posterior mean of one fixed validation image. Rows are
    ordered by KL(q(z_d|x) || N(0, 1)) averaged over ``num_images`` fixed validation images,
    largest first, so informative dimensions come first and collapsed ones (constant rows)
    last; the first ``num_dims`` of that order are shown. A conditional network encodes the
    images with their labels and decodes every row with the centre image's label.

    Args:
        num_dims: rows (K); all dimensions when the latent space is smaller.
        num_steps: values per row, evenly spaced over [-limit, limit].
        limit: the traversal range in prior standard deviations.
        image_index: which of the fixed validation images is the centre of the traversal.
        num_images: fixed validation images over which the KL per dimension is averaged.
    """

    num_dims: PositiveInt = 10
    num_steps: PositiveInt = 11
    limit: PositiveFloat = 3.0
    image_index: NonNegativeInt = 0
    num_images: PositiveInt = 256

    def __post_init__(self) -> None:
        if not 0 <= self.image_index < self.num_images:
            raise ValueError(
                f"image_index={self.image_index} must index one of the num_images="
                f"{self.num_images} fixed validation images."
            )
        super().__post_init__()

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        mu, logvar = encode(pl_module, self.images, self.labels)
        kl_per_dim = gaussian.kl_standard_normal_per_dim(mu, logvar).mean(dim=0)
        order = kl_per_dim.argsort(descending=True, stable=True)
        dims = order[: self.num_dims].tolist()
        values = torch.linspace(-self.limit, self.limit, self.num_steps)
        index = min(self.image_index, len(mu) - 1)
        latents = traversal_latents(mu[index], dims, values)
        labels = self.labels[index].cpu().expand(len(latents))
        images = decode(pl_module, latents, labels)
        writer.add_image(
            "val/traversals", make_grid(images, nrow=self.num_steps), trainer.global_step
        )
