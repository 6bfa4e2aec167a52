"""Decoder likelihoods p(x|z): each turns the decoder's output into a normalised log-density.

The decoder emits ``decoder_channels(C)`` values per pixel, ``logits`` (one per channel for
all but mixtures), and each class says what they mean. ``log_prob`` sums over the image
dimensions (C, H, W) and broadcasts over any leading ones, so the same code serves one
sample per image (ELBO) and k samples per image (IWAE: logits of shape (k, B, C, H, W)
against x of shape (B, C, H, W)). Every log-density is normalised, so the ELBO computed with
it is a true lower bound on log p(x).

Which data goes with which likelihood:
- ``Bernoulli``: binary pixels (``data.binarize=dynamic|static``).
- ``ContinuousBernoulli``, ``Gaussian``: grey levels in [0, 1] (``data.binarize=none``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat
from torch import Tensor, nn

from vae_lightning.param_types import ImageShape

IMAGE_DIMS = (-3, -2, -1)  # (C, H, W): summed over, everything in front is batch
LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Base class: ``log_prob(logits, x)`` per image and ``mean(logits)`` = E[x|z]."""

    # The data it is a likelihood of: 0/1 pixels (True) or grey levels in [0, 1] (False).
    expects_binary: bool

    def decoder_channels(self, image_channels: int) -> int:
        """How many values per pixel the decoder emits: one per channel unless the likelihood
        needs more (a mixture's weights, means and scales)."""
        return image_channels

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, logits: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Binary pixels with probabilities sigmoid(logits) (Kingma & Welling, 2014)."""

    expects_binary = True

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(
            logits, x.float().expand_as(logits), reduction="none"
        )
        return -bce.sum(dim=IMAGE_DIMS)

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())


# Below these |logit|s the closed forms lose digits to cancellation (and divide 0 by 0 at
# lambda = 0.5); their Taylor series are exact to float32 rounding there (the first terms left
# out are eta^8 / 9676800 and eta^7 / 1209600, below 1e-14 at |eta| = 0.1).
CB_TAYLOR_CUTOFF = 1e-1
CB_MEAN_TAYLOR_CUTOFF = 1e-1


def continuous_bernoulli_log_partition(logits: Tensor) -> Tensor:
    """A(eta) = log int_0^1 exp(eta x) dx = log((exp(eta) - 1) / eta), computed stably.

    The continuous Bernoulli with lambda = sigmoid(eta) is the exponential family
    p(x) = exp(eta x - A(eta)) on [0, 1]. For large |eta| the form
    max(eta, 0) + log(1 - exp(-|eta|)) - log|eta| cannot overflow; near eta = 0 (lambda near
    0.5, where the paper's expression is 0/0) its Taylor series
    eta/2 + log(sinh(eta/2) / (eta/2)) = eta/2 + eta^2/24 - eta^4/2880 + eta^6/181440 - ...
    """
    eta = logits
    small = eta.abs() < CB_TAYLOR_CUTOFF
    # Each branch sees only inputs where it is finite, so no NaN leaks into the gradients.
    big, tiny = torch.where(small, 1.0, eta), torch.where(small, eta, 0.0)
    exact = big.clamp(min=0) + torch.log(-torch.expm1(-big.abs())) - torch.log(big.abs())
    taylor = tiny / 2 + tiny.pow(2) / 24 - tiny.pow(4) / 2880 + tiny.pow(6) / 181440
    return torch.where(small, taylor, exact)


def continuous_bernoulli_log_normalizer(logits: Tensor) -> Tensor:
    """log C(lambda) of Loaiza-Ganem & Cunningham (2019), with lambda = sigmoid(logits).

    p(x|lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1], and
    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), which tends to 2 at lambda = 0.5.
    Since lambda^x (1 - lambda)^(1 - x) = (1 - lambda) exp(eta x),
    log C = -log(1 - lambda) - A(eta) = softplus(eta) - A(eta).
    """
    logits = logits.float()
    return F.softplus(logits) - continuous_bernoulli_log_partition(logits)


class ContinuousBernoulli(Likelihood):
    """Grey levels in [0, 1] (Loaiza-Ganem & Cunningham, 2019): the Bernoulli made a density.

    The decoder emits eta = logit(lambda); log p(x) = eta x - A(eta) per pixel, which equals
    the paper's x log lambda + (1 - x) log(1 - lambda) + log C(lambda).
    """

    expects_binary = False

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        eta = logits.float()
        per_pixel = eta * x.float() - continuous_bernoulli_log_partition(eta)
        return per_pixel.sum(dim=IMAGE_DIMS)

    def mean(self, logits: Tensor) -> Tensor:
        """E[x] = 1 / (1 - exp(-eta)) - 1 / eta, which is 1/2 at eta = 0 (lambda = 0.5)."""
        eta = logits.float()
        small = eta.abs() < CB_MEAN_TAYLOR_CUTOFF
        big, tiny = torch.where(small, 1.0, eta), torch.where(small, eta, 0.0)
        exact = -1.0 / torch.expm1(-big) - 1.0 / big
        taylor = 0.5 + tiny / 12 - tiny.pow(3) / 720 + tiny.pow(5) / 30240
        return torch.where(small, taylor, exact)


class Gaussian(Likelihood):
    """Grey levels under N(x; sigmoid(logits), std^2) per pixel.

    The mean is squashed into (0, 1) as Kingma & Welling (2014) do for Frey faces. The
    standard deviation is either fixed (``variance="fixed"``) or one learned parameter per
    pixel shared by all images (``variance="learned"``), which keeps the decoder unchanged.
    ``min_std`` floors it: pixels that never vary (image corners) would otherwise shrink their
    std towards 0 and the density towards infinity.
    """

    expects_binary = False

    def __init__(
        self,
        image_shape: ImageShape,
        std: PositiveFloat = 0.1,
        variance: Literal["fixed", "learned"] = "fixed",
        min_std: PositiveFloat = 0.01,
    ) -> None:
        super().__init__()
        if not min_std <= std:
            raise ValueError(f"std={std} is below its floor min_std={min_std}: lower min_std.")
        self.variance, self.min_std = variance, min_std
        log_std = torch.full(tuple(image_shape), math.log(std))
        if variance == "learned":
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def floored_log_std(self) -> Tensor:
        """log std per pixel, (C, H, W), after the ``min_std`` floor."""
        return self.log_std.clamp(min=math.log(self.min_std))

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        log_std = self.floored_log_std()
        z = (x.float() - self.mean(logits)) / log_std.exp()
        per_pixel = -0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI
        return per_pixel.sum(dim=IMAGE_DIMS)

    def mean(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())
