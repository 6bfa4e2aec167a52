"""Gaussian encoders q(z|x) = N(mu(x), diag(exp(logvar(x))))."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# exp(logvar) must stay finite in float32 and bf16: e^20 ~ 5e8 and e^-30 ~ 1e-13.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class GaussianHead(nn.Module):
    """Maps features to the mean and (clamped) log-variance of a diagonal Gaussian."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(in_features, latent_dim)
        self.logvar = nn.Linear(in_features, latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)


class MLPEncoder(nn.Module):
    """Flattened image -> hidden layers -> (mu, logvar); Kingma & Welling use 784-400-latent."""

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), activation()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = GaussianHead(width, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.body(x))


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 stride-2 convolution halving the resolution, with BatchNorm and ELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ELU(),
    )


class ConvEncoder(nn.Module):
    """The reference CNN encoder: conv 16/32/64 (28 -> 14 -> 7 -> 4), hidden layer, Gaussian.

    One stride-2 stage per entry of ``channels``, each halving the resolution (rounding up).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        hidden_dim: int,
        latent_dim: int,
    ) -> None:
        super().__init__()
        in_channels = image_shape[0]
        blocks = []
        for out_channels in channels:
            blocks.append(conv_block(in_channels, out_channels))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks, nn.Flatten())
        with torch.no_grad():
            feature_dim = self.features(torch.zeros(1, *image_shape)).shape[1]
        self.hidden = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ELU())
        self.head = GaussianHead(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.hidden(self.features(x)))
