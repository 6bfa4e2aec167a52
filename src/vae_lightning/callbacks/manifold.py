"""The learned 2-D manifold, as in Kingma & Welling's figure (latent_dim == 2 only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from pydantic import PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, is_conditional
from vae_lightning.models.latent import gaussian_grid


@dataclass(eq=False)
class LatentManifold(VisualCallback):
    """Logs ``val/manifold``: decoder means over a grid of N(0, 1) quantiles.

    Only a 2-D latent space can be drawn this way; with any other ``latent_dim`` the callback
    says so once and logs nothing (``val/traversals`` and ``val/latent_pca`` cover that case).
    A conditional network draws the manifold of class 0 (``val/samples`` shows every class).

    Args:
        grid_size: images per side.
        quantile_range: lowest and highest prior probability on each axis; (0.05, 0.95)
            spans about +-1.64 standard deviations.
    """

    grid_size: PositiveInt = 20
    quantile_range: Sequence[float] = (0.05, 0.95)
    num_images: int = field(default=0, init=False)  # decodes a grid, shows no input image

    def __post_init__(self) -> None:
        super().__post_init__()
        self.latents = gaussian_grid(self.grid_size, *self.quantile_range)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.net.latent_dim != 2:
            rank_zero_info(
                f"val/manifold is drawn only for model.latent_dim=2 (this run has "
                f"{pl_module.net.latent_dim}); see val/traversals and val/latent_pca instead."
            )

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        if pl_module.net.latent_dim != 2:
            return
        labels = torch.zeros(len(self.latents), dtype=torch.long)
        images = decode(pl_module, self.latents, labels if is_conditional(pl_module) else None)
        writer.add_image(
            "val/manifold", make_grid(images, nrow=self.grid_size), trainer.global_step
        )
