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
- ``DiscretizedLogistic``: 8-bit levels k/255 (``data.binarize=none``); a probability mass,
  not a density, so its bits/dim are those the literature reports for 8-bit images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
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
        """sum_pixels x l - softplus(l), which is log sigmoid(l) for x = 1 and log sigmoid(-l)
        for x = 0: the negative binary cross-entropy with logits l.

        Two passes over the logits (a product and a softplus), where torch's BCE-with-logits
        makes about five: on CPU the IWAE estimator spent more time in the BCE than in the
        decoder's last matrix product. Each sum is float32 over the pixels, so the result
        differs from the BCE's by float32 rounding of those sums (about 1e-4 nats per
        28x28 image).
        """
        logits = logits.float()
        return (logits * x.float()).sum(dim=IMAGE_DIMS) - F.softplus(logits).sum(dim=IMAGE_DIMS)

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


# ------------------------------------------------------------------ discretized logistic

# 8-bit images: x = k / 255, k = 0..255. As in PixelCNN++ the levels are placed on [-1, 1],
# 2/255 apart, so a network output of 0 is mid-grey; each bin is [v - 1/255, v + 1/255],
# except the edge bins, which extend to -inf and +inf so that the 256 masses sum to 1.
MAX_LEVEL = 255
HALF_BIN = 1 / MAX_LEVEL
# PixelCNN++'s floor on the log-scales (in [-1, 1] units): e^-7 ~ 1e-3 is an eighth of a bin,
# so a bin's mass can reach 1 - 1e-7 while the gradients stay bounded.
MIN_LOG_SCALE = -7.0
# Below this width (in scales) log(1 - e^-w) is computed as its series log w - w/2 (the next
# term, w^2/24, is under 1e-9 there); above it, log(-expm1(-w)) is exact to float32 rounding.
LOG1MEXP_SERIES_CUTOFF = 1e-4
MAX_LOG_SCALE_OF_MEAN = 50.0


def log_one_minus_exp_neg(width: Tensor, log_width: Tensor) -> Tensor:
    """log(1 - e^-w) for w > 0, given w and log w; finite even where w underflows to 0."""
    small = width < LOG1MEXP_SERIES_CUTOFF
    # Each branch sees only inputs where it is finite, so no NaN leaks into the gradients.
    big = torch.where(small, 1.0, width)
    return torch.where(small, log_width - width / 2, torch.log(-torch.expm1(-big)))


def discretized_logistic_log_mass(
    x: Tensor, level: Tensor, mean: Tensor, log_scale: Tensor
) -> Tensor:
    """log P(level) of a logistic(mean, e^log_scale) rounded to the 256 levels of [-1, 1].

    ``x`` is the level's value on [-1, 1]. With a = (x + 1/255 - mean) / s and
    b = (x - 1/255 - mean) / s, the mass sigmoid(a) - sigmoid(b) is computed as
    sigmoid(a) sigmoid(-b) (1 - e^(b - a)), an exact identity whose three logs are each
    stable: no cancellation in either tail, so no need for PixelCNN++'s approximation of a
    tiny mass by the density at the bin's centre. The lowest level's bin has b = -inf
    (sigmoid(-b) = 1, e^(b-a) = 0), the highest's a = +inf (sigmoid(a) = 1).
    """
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper, lower = inv_scale * (centred + HALF_BIN), inv_scale * (centred - HALF_BIN)
    log_width = math.log(2 * HALF_BIN) - log_scale  # of the bin, in scales: b - a = -width
    at_bottom, at_top = level == 0, level == MAX_LEVEL
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    log_cdf_upper = torch.where(at_top, zero, F.logsigmoid(upper))
    log_survival_lower = torch.where(at_bottom, zero, F.logsigmoid(-lower))
    log_width_term = torch.where(
        at_bottom | at_top, zero, log_one_minus_exp_neg(log_width.exp(), log_width)
    )
    return log_cdf_upper + log_survival_lower + log_width_term


def clamped_logistic_mean(mean: Tensor, scale: Tensor) -> Tensor:
    """E[clamp(Y, -1, 1)] for Y ~ logistic(mean, scale):
    -1 + int_{-1}^{1} P(Y > y) dy = -1 + s (softplus(a) - softplus(b)), a, b = (mean -+ -1)/s.

    For wide logistics (s > 1) the difference cancels; there it is computed as
    log1p(sigmoid(b) expm1(a - b)), with a - b = 2/s, which (1 + e^a)/(1 + e^b) equals.
    """
    wide = scale > 1
    narrow_scale, wide_scale = torch.where(wide, 1.0, scale), torch.where(wide, scale, 1.0)
    narrow = narrow_scale * (
        F.softplus((mean + 1) / narrow_scale) - F.softplus((mean - 1) / narrow_scale)
    )
    wide_form = wide_scale * torch.log1p(
        torch.sigmoid((mean - 1) / wide_scale) * torch.expm1(2 / wide_scale)
    )
    return -1 + torch.where(wide, wide_form, narrow)


def coupling_index(c: int, j: int) -> int:
    """Where channel c's coupling to an earlier channel j < c sits among the C(C-1)/2:
    row by row, (1,0), (2,0), (2,1), ... (PixelCNN++'s order for RGB)."""
    return c * (c - 1) // 2 + j


def coupled_shift(couplings: Tensor, earlier: Sequence[Tensor], c: int) -> Tensor | float:
    """sum_{j<c} coupling_cj earlier_j: how far the earlier channels' values (each
    (..., H, W)) move channel c's mean, for couplings (..., C(C-1)/2, H, W); 0 for c = 0."""
    return sum(
        (couplings[..., coupling_index(c, j), :, :] * earlier[j] for j in range(c)), start=0.0
    )


class DiscretizedLogistic(Likelihood):
    """A mixture of ``num_mixtures`` discretized logistics per pixel (Salimans et al., 2017,
    PixelCNN++) on 8-bit images with any number of channels C.

    Per pixel and component m the decoder emits a mixture logit, C means, C log-scales and
    C(C-1)/2 coupling coefficients (10 M values for RGB, 3 M for grey). Channels are
    autoregressive within a pixel: channel c's mean is mu_c + sum_{j<c} tanh(coeff_cj) x_j,
    so green depends on red and blue on both, and the per-pixel joint over the 256^C colours
    is normalised. ``x`` is snapped to its level k = round(255 x): log_prob is the log
    probability *mass* of the 8-bit image, whose bits/dim are those of the literature.
    """

    expects_binary = False

    def __init__(self, num_mixtures: PositiveInt = 10) -> None:
        super().__init__()
        self.num_mixtures = num_mixtures

    def decoder_channels(self, image_channels: int) -> int:
        couplings = image_channels * (image_channels - 1) // 2
        return self.num_mixtures * (1 + 2 * image_channels + couplings)

    def image_channels(self, logits: Tensor) -> int:
        """C such that ``decoder_channels(C)`` is the logits' channel count."""
        found = logits.shape[-3]
        for channels in range(1, found + 1):
            if self.decoder_channels(channels) == found:
                return channels
        raise ValueError(
            f"the decoder emits {found} values per pixel, which fits no image under a mixture "
            f"of {self.num_mixtures} discretized logistics (3M for grey, 10M for RGB): build "
            "the model with output_channels=likelihood.decoder_channels(image_channels)."
        )

    def split(self, logits: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The decoder's (..., decoder_channels, H, W) as mixture log-weights (..., M, H, W),
        means and log-scales (..., M, C, H, W) and couplings (..., M, C(C-1)/2, H, W)."""
        if logits.shape[-3] != self.decoder_channels(channels):
            raise ValueError(
                f"the decoder emits {logits.shape[-3]} values per pixel but a mixture of "
                f"{self.num_mixtures} discretized logistics on {channels}-channel images "
                f"needs {self.decoder_channels(channels)}: build the model with "
                "output_channels=likelihood.decoder_channels(image_channels)."
            )
        m, c = self.num_mixtures, channels
        sizes = [m, m * c, m * c, m * c * (c - 1) // 2]
        weights, means, log_scales, couplings = logits.float().split(sizes, dim=-3)
        return (
            F.log_softmax(weights, dim=-3),
            means.unflatten(-3, (m, c)),
            log_scales.unflatten(-3, (m, c)).clamp(min=MIN_LOG_SCALE),
            torch.tanh(couplings.unflatten(-3, (m, c * (c - 1) // 2))),
        )

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        channels = x.shape[-3]
        log_weights, means, log_scales, couplings = self.split(logits, channels)
        level = (x.float() * MAX_LEVEL).round().clamp(0, MAX_LEVEL).unsqueeze(-4)
        value = level * (2 / MAX_LEVEL) - 1  # on [-1, 1]; (B, 1, C, H, W): one per component
        values = value.unbind(-3)
        shifted = [
            means[..., c, :, :] + coupled_shift(couplings, values, c) for c in range(channels)
        ]
        means = torch.stack(torch.broadcast_tensors(*shifted), dim=-3)
        per_channel = discretized_logistic_log_mass(value, level, means, log_scales)
        per_pixel = torch.logsumexp(log_weights + per_channel.sum(dim=-3), dim=-3)
        return per_pixel.sum(dim=(-2, -1))

    def mean(self, logits: Tensor) -> Tensor:
        """E[x|z] in [0, 1], (..., C, H, W): per component, each channel's mean is that of its
        logistic clamped to [-1, 1], with the earlier channels' means in its coupling; then
        weighted by the mixture. Exact for one channel up to the rounding to levels (at most
        half a level, 1/510); for coupled channels it neglects the clamp's curvature."""
        channels = self.image_channels(logits)
        log_weights, means, log_scales, couplings = self.split(logits, channels)
        # Past e^50 the clamped mean is 0 to float32 rounding; e^log_scale could overflow.
        scales = log_scales.clamp(max=MAX_LOG_SCALE_OF_MEAN).exp()
        component_means: list[Tensor] = []  # per channel, (..., M, H, W) on [-1, 1]
        for c in range(channels):
            mean_c = means[..., c, :, :] + coupled_shift(couplings, component_means, c)
            component_means.append(clamped_logistic_mean(mean_c, scales[..., c, :, :]))
        per_component = torch.stack(component_means, dim=-3)  # (..., M, C, H, W) on [-1, 1]
        mixed = (log_weights.exp().unsqueeze(-3) * per_component).sum(dim=-4)
        return ((mixed + 1) / 2).clamp(0, 1)
