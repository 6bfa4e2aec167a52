"""Residual convolutional VAE: pre-activation ResNet stages in the encoder, their mirror image
in the decoder (He et al., 2016, "Identity Mappings in Deep Residual Networks").

Encoder: a 3x3 stem conv to ``channels[0]``, then one stage per entry of ``channels``: the
first at the image's resolution, each next one halving it in its first block (28 -> 14 -> 7
-> 4 with four stages). A final norm and activation, flatten, and the Gaussian head.
Decoder: a linear layer to the deepest feature map, the stages in reverse, each ending in a
block that doubles the resolution back to the encoder's size at that depth (4 -> 7 -> 14 ->
28, via ``stages.stage_sizes``), then norm, activation and a 3x3 conv to the likelihood's
values per pixel.

Normalisation is GroupNorm, not BatchNorm: with it q(z|x) and p(x|z) of one image do not
depend on the other images of its batch, so the training loss, the validation ELBO and the
IWAE bound (k copies of one image in a batch) evaluate the same function, whatever the batch
size or the number of DDP processes; BatchNorm's train-mode batch statistics would not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from annotated_types import Len
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models.encoders import GaussianHead
from vae_lightning.models.posteriors import Posterior
from vae_lightning.models.priors import Prior
from vae_lightning.models.stages import Size, check_image_fits, stage_sizes
from vae_lightning.models.vae import (
    ACTIVATIONS,
    VAE,
    Activation,
    WeightInit,
    init_networks,
    output_shape,
)
from vae_lightning.param_types import ImageShape

# GroupNorm's default group count in Wu & He (2018) is 32; 8 keeps at least 4 channels per
# group at the narrowest default width (32). gcd: a group count that divides any width.
NORM_GROUPS = 8


def group_norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(width, NORM_GROUPS), width)


class PreActBlock(nn.Module):
    """``x + f(x)`` with f = norm, act, conv3x3, norm, act, conv3x3 (pre-activation).

    ``resize`` makes it a resampling block: ``"down"`` halves the resolution with a stride-2
    first conv, ``"up"`` first upsamples (nearest) to ``up_size``, the exact size wanted,
    which avoids the uneven overlap of transposed convs. The shortcut then resamples the same
    way and projects with a 1x1 conv, as it does when the width changes.
    """

    def __init__(
        self,
        in_width: int,
        out_width: int,
        activation: type[nn.Module],
        resize: Literal["down", "up"] | None = None,
        up_size: Size | None = None,
    ) -> None:
        super().__init__()
        stride = 2 if resize == "down" else 1

        def upsample() -> list[nn.Module]:
            return [nn.Upsample(size=up_size, mode="nearest")] if resize == "up" else []

        self.branch = nn.Sequential(
            group_norm(in_width),
            activation(),
            *upsample(),
            nn.Conv2d(in_width, out_width, 3, stride=stride, padding=1),
            group_norm(out_width),
            activation(),
            nn.Conv2d(out_width, out_width, 3, padding=1),
        )
        if resize is None and in_width == out_width:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                *upsample(), nn.Conv2d(in_width, out_width, 1, stride=stride)
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.branch(x)


class ResNetEncoder(nn.Module):
    """Image -> stem -> residual stages (each after the first halving) -> (mu, logvar)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        blocks_per_stage: int,
        latent_dim: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], channels[0], 3, padding=1)]
        width = channels[0]
        for stage, stage_width in enumerate(channels):
            for block in range(blocks_per_stage):
                resize = "down" if stage > 0 and block == 0 else None
                layers.append(PreActBlock(width, stage_width, activation, resize))
                width = stage_width
        layers += [group_norm(width), activation(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        height, side = stage_sizes(image_shape, len(channels) - 1)[-1]
        self.head = GaussianHead(width * height * side, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(x))


class ResNetDecoder(nn.Module):
    """latent -> deepest feature map -> the encoder's stages in reverse -> one value per pixel
    and output channel (the likelihood's raw parameters: no norm or activation after)."""

    def __init__(
        self,
        latent_dim: int,
        channels: Sequence[int],
        blocks_per_stage: int,
        output_shape: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        sizes = stage_sizes(output_shape, len(channels) - 1)  # stage i works at sizes[i]
        self.seed_shape = (channels[-1], *sizes[-1])
        self.seed = nn.Linear(latent_dim, math.prod(self.seed_shape))
        layers: list[nn.Module] = []
        for stage in reversed(range(len(channels))):
            width = channels[stage]
            for block in range(blocks_per_stage):
                if stage > 0 and block == blocks_per_stage - 1:  # mirrors the "down" block
                    up = PreActBlock(
                        width, channels[stage - 1], activation, "up", sizes[stage - 1]
                    )
                    layers.append(up)
                else:
                    layers.append(PreActBlock(width, width, activation))
        layers += [
            group_norm(channels[0]),
            activation(),
            nn.Conv2d(channels[0], output_shape[0], 3, padding=1),
        ]
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.seed(z).view(-1, *self.seed_shape))


def resnet_vae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 64,
    channels: Annotated[Sequence[PositiveInt], Len(1)] = (32, 64, 128, 256),
    blocks_per_stage: PositiveInt = 2,
    activation: Activation = "relu",
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> VAE:
    """Residual convolutional VAE, for 28x28 to 64x64 images of any channel count.

    ``channels``: the width of each stage; the first stage runs at the image's resolution
    and each next one halves it, so the image needs at least 2**(len(channels) - 1) pixels a
    side. ``blocks_per_stage``: residual blocks per stage (two 3x3 convs each), the
    resampling one included. ``output_channels``, ``prior`` and ``posterior`` as for every
    model factory (``mlp_vae``).
    """
    check_image_fits(image_shape, len(channels) - 1, f"resnet_vae with channels={list(channels)}")
    act = ACTIVATIONS[activation]
    encoder = ResNetEncoder(image_shape, channels, blocks_per_stage, latent_dim, act)
    decoder = ResNetDecoder(
        latent_dim, channels, blocks_per_stage, output_shape(image_shape, output_channels), act
    )
    vae = VAE(encoder, decoder, latent_dim, prior, posterior)
    init_networks(vae, init)
    return vae
