"""Decoders p(x|z): latent code -> one likelihood parameter per pixel (the decoder output).

What that output means (Bernoulli logits, continuous-Bernoulli natural parameters, Gaussian
means before the sigmoid) is the likelihood's business: models/likelihoods.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLPDecoder(nn.Module):
    """latent -> hidden layers -> the likelihood's parameters, shaped (channels, H, W)."""

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        output_shape: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        layers += [nn.Linear(width, math.prod(output_shape)), nn.Unflatten(1, tuple(output_shape))]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


def deconv_block(in_channels: int, out_channels: int, output_padding: int) -> nn.Sequential:
    """3x3 stride-2 transposed convolution doubling the resolution, with BatchNorm and ELU."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=output_padding
        ),
        nn.BatchNorm2d(out_channels),
        nn.ELU(),
    )


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: latent -> hidden -> 64x4x4 -> 7 -> 14 -> 28, one output per pixel.

    Designed for 28x28 images (MNIST, Fashion-MNIST); the spatial sizes are fixed by the
    encoder's three stride-2 convolutions.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        channels: Sequence[int],
        output_shape: Sequence[int],
    ) -> None:
        super().__init__()
        if tuple(output_shape[1:]) != (28, 28) or len(channels) != 3:
            raise ValueError(
                f"ConvDecoder supports 28x28 images with 3 conv stages, got output_shape="
                f"{tuple(output_shape)} and channels={tuple(channels)}."
            )
        top, mid, low = channels[::-1]  # 64, 32, 16
        self.seed_shape = (top, 4, 4)
        self.hidden = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ELU(),
            nn.Linear(hidden_dim, math.prod(self.seed_shape)),
            nn.ELU(),
        )
        self.upsample = nn.Sequential(
            deconv_block(top, mid, output_padding=0),  # 4 -> 7
            deconv_block(mid, low, output_padding=1),  # 7 -> 14
            nn.ConvTranspose2d(low, output_shape[0], 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.hidden(z).view(-1, *self.seed_shape))
