"""Latent traversals: one latent dimension at a time, the most informative first."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, encode
from vae_lightning.models.diagnostics import posterior_mean_variance
from vae_lightning.models.latent import traversal_latents


@dataclass(eq=False)
class LatentTraversals(VisualCallback):
    """Logs ``val/traversals``: row k varies one latent dimension over [-limit, limit].

    The other dimensions stay at the posterior mean of one fixed validation image. Rows are
    ordered by KL(q(z_d|x) || p(z_d)) averaged over ``num_images`` fixed validation images,
    largest first, so informative dimensions come first and collapsed ones (constant rows)
    last; the first ``num_dims`` of that order are shown. A learned prior (a mixture) has no
    KL per dimension, and the KL to N(0, 1) would rank its dimensions by how far the prior
    is from N(0, 1): the order is then by the variance of the posterior means over the
    images (Burda et al.'s activity statistic), which measures the same thing, free of p.
    A conditional network encodes the images with their labels and decodes every row with
    the centre image's label.

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
        kl = pl_module.net.prior.kl_per_dim(mu, logvar)
        informative = posterior_mean_variance(mu) if kl is None else kl.mean(dim=0)
        order = informative.argsort(descending=True, stable=True)
        dims = order[: self.num_dims].tolist()
        values = torch.linspace(-self.limit, self.limit, self.num_steps)
        index = min(self.image_index, len(mu) - 1)
        latents = traversal_latents(mu[index], dims, values)
        labels = self.labels[index].cpu().expand(len(latents))
        images = decode(pl_module, latents, labels)
        writer.add_image(
            "val/traversals", make_grid(images, nrow=self.num_steps), trainer.global_step
        )
