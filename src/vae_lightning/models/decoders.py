"""Decoders p(x|z): latent code -> one likelihood parameter per pixel (the decoder output).

What that output means (Bernoulli logits, continuous-Bernoulli natural parameters, Gaussian
means before the sigmoid) is the likelihood's business: models/likelihoods.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vae_lightning.models.stages import stage_sizes, transposed_output_padding


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


def deconv_block(
    in_channels: int, out_channels: int, output_padding: int | tuple[int, int]
) -> nn.Sequential:
    """3x3 stride-2 transposed convolution doubling the resolution, with BatchNorm and ELU."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=output_padding
        ),
        nn.BatchNorm2d(out_channels),
        nn.ELU(),
    )


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: latent -> hidden -> the deepest feature map -> back up one
    stride-2 transposed convolution per encoder stage to exactly the image's height and width.

    The spatial sizes are the encoder's (``stages.stage_sizes``): 4x4 -> 7 -> 14 -> 28 for
    28x28 images and three stages, 4 -> 8 -> 16 -> 32 for 32x32, 8 -> ... -> 64 for 64x64.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        channels: Sequence[int],
        output_shape: Sequence[int],
    ) -> None:
        super().__init__()
        sizes = stage_sizes(output_shape, len(channels))  # the image's, then each stage's
        self.seed_shape = (channels[-1], *sizes[-1])
        self.hidden = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ELU(),
            nn.Linear(hidden_dim, math.prod(self.seed_shape)),
            nn.ELU(),
        )
        widths = [output_shape[0], *channels]  # a stage's input width, then its output's
        layers: list[nn.Module] = []
        for stage in reversed(range(1, len(channels) + 1)):  # the encoder's stages, deepest first
            padding = transposed_output_padding(sizes[stage], sizes[stage - 1])
            if stage > 1:
                layers.append(deconv_block(widths[stage], widths[stage - 1], padding))
            else:  # back to the image: the likelihood's raw parameters, no norm or activation
                layers.append(
                    nn.ConvTranspose2d(
                        widths[1], widths[0], 3, stride=2, padding=1, output_padding=padding
                    )
                )
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.hidden(z).view(-1, *self.seed_shape))
