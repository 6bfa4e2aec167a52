"""Interpolations between pairs of validation images through the latent space."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from pydantic import PositiveInt
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from vae_lightning.callbacks.base import VisualCallback, decode, encode, is_conditional
from vae_lightning.models.latent import INTERPOLATIONS, Interpolation


@dataclass(eq=False)
class LatentInterpolations(VisualCallback):
    """Logs ``val/interpolations``: one row per pair of fixed validation images.

    Each row shows image a, the decoder means along the path between the posterior means of
    a and b (``num_steps`` points, both ends included), then image b. A conditional network
    encodes each image with its label and decodes the path with the label mixed in the same
    proportions (class probabilities, from a's one-hot to b's).

    Args:
        num_pairs: rows; pair i is fixed validation images 2i and 2i+1.
        num_steps: decoded points per path.
        method: ``linear`` (straight line) or ``spherical`` (slerp, which stays in the shell
            where a high-dimensional Gaussian keeps its mass).
    """

    num_pairs: PositiveInt = 8
    num_steps: PositiveInt = 10
    method: Interpolation = "linear"
    num_images: int = field(default=16, init=False)  # two per pair: set from num_pairs

    def __post_init__(self) -> None:
        self.num_images = 2 * self.num_pairs
        super().__post_init__()

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        pairs = self.num_collected // 2
        if pairs == 0:
            return
        inputs = self.images[: 2 * pairs].float().cpu()
        labels = self.labels[: 2 * pairs].cpu()
        mu, _ = encode(pl_module, inputs, labels)
        weights = torch.linspace(0.0, 1.0, self.num_steps)
        path = INTERPOLATIONS[self.method](mu[0::2], mu[1::2], weights)  # (pairs, steps, D)
        path_labels = None
        if is_conditional(pl_module):
            one_hot = torch.nn.functional.one_hot(labels, pl_module.net.num_classes).float()
            mix = weights[None, :, None]  # (1, steps, 1): b's share at each step
            path_labels = (one_hot[0::2, None] * (1 - mix) + one_hot[1::2, None] * mix).flatten(
                0, 1
            )
        middle = decode(pl_module, path.flatten(0, 1), path_labels)
        middle = middle.unflatten(0, (pairs, self.num_steps))
        rows = torch.cat([inputs[0::2, None], middle, inputs[1::2, None]], dim=1)
        grid = make_grid(rows.flatten(0, 1), nrow=self.num_steps + 2)
        writer.add_image("val/interpolations", grid, trainer.global_step)
