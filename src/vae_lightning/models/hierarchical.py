"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov, 2016, section 5).

Generative model:   p(z2) = N(0, I),  p(z1|z2) = N(mu(z2), diag sigma^2(z2)),  p(x|z1);
inference model:    q(z1|x) = N(mu(x), diag sigma^2(x)),  q(z2|z1) = N(mu(z1), diag sigma^2(z1)).

Burda et al.'s MNIST network: x -200-200- z1 (100) -100-100- z2 (50) on both sides, tanh,
Glorot-uniform weights and zero biases, each Gaussian's sigma = exp(linear layer) (so
log sigma^2 is linear in the features, as in :class:`GaussianHead`, which clamps it).

The latent interface (docs/models.md) makes this family train and evaluate with the shared
objectives: :meth:`HierarchicalVAE.draw_latents` returns z = z1 (what the decoder gets) with
log q = log q(z1|x) + log q(z2|z1) and log p = log p(z2) + log p(z1|z2), so the ELBO, IWAE_k
and test/nll_iwae are those of the whole hierarchy. There is no closed-form KL (the KL is the
one-draw estimate log q - log p, as Burda et al. use). The pictures walk in the top layer z2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models import gaussian
from vae_lightning.models.decoders import MLPDecoder
from vae_lightning.models.encoders import MLPEncoder
from vae_lightning.models.posteriors import GaussianPosterior, LatentSample, Posterior
from vae_lightning.models.priors import Prior, StandardNormal
from vae_lightning.models.vae import (
    ACTIVATIONS,
    VAE,
    WEIGHT_INITS,
    Activation,
    VAEOutput,
    WeightInit,
    output_shape,
)
from vae_lightning.param_types import ImageShape


class HierarchicalVAE(VAE):
    """Two stochastic layers: x -> z1 -> z2 for inference, z2 -> z1 -> x for generation.

    ``encoder`` is q(z1|x) and ``decoder`` p(x|z1), as in the one-layer VAE (``encode`` and
    ``decode`` keep their meaning for z1); ``encoder_top`` is q(z2|z1) and ``decoder_top``
    p(z1|z2), each a Gaussian network of the code below or above. ``latent_dim`` is the top
    layer's size (the prior's), ``z1_dim`` the bottom one's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        encoder_top: nn.Module,
        decoder_top: nn.Module,
        decoder: nn.Module,
        z1_dim: int,
        latent_dim: int,
    ) -> None:
        super().__init__(encoder, decoder, latent_dim, StandardNormal(latent_dim))
        self.encoder_top = encoder_top
        self.decoder_top = decoder_top
        self.z1_dim = z1_dim

    def _top_posterior(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """q(z2|z1)'s (mu, logvar) for codes (..., z1_dim)."""
        mu, logvar = self.encoder_top(z1.to(self.dtype).flatten(0, -2))
        return mu.unflatten(0, z1.shape[:-1]), logvar.unflatten(0, z1.shape[:-1])

    def _bottom_prior(self, z2: Tensor) -> tuple[Tensor, Tensor]:
        """p(z1|z2)'s (mu, logvar) for codes (..., latent_dim)."""
        mu, logvar = self.decoder_top(z2.to(self.dtype).flatten(0, -2))
        return mu.unflatten(0, z2.shape[:-1]), logvar.unflatten(0, z2.shape[:-1])

    def forward(self, x: Tensor, labels: Tensor | None = None) -> VAEOutput:
        """q(z1|x), one reparameterised z1 and its decoding: the reconstruction path."""
        mu, logvar = self.encode(x, labels)
        z1 = gaussian.sample(mu, logvar)
        return VAEOutput(self.decode(z1, labels), mu, logvar, z1)

    def draw_latents(
        self, mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None = None
    ) -> LatentSample:
        """k draws z1 ~ q(z1|x), then z2 ~ q(z2|z1) for each: z = z1, with the log-densities
        of both layers under q and p, each (k, B), in at least float32."""
        bottom = gaussian.sample_k(mu, logvar, k, generator)
        log_q_z1 = gaussian.log_normal_from_noise(bottom.eps, logvar)
        mu_top, logvar_top = self._top_posterior(bottom.z)
        top = gaussian.sample_k(mu_top, logvar_top, 1, generator)
        z2 = top.z[0]
        log_q_z2 = gaussian.log_normal_from_noise(top.eps[0], logvar_top)
        mu_prior, logvar_prior = self._bottom_prior(z2)
        log_p_z1 = gaussian.log_normal(bottom.z, mu_prior, logvar_prior)
        return LatentSample(bottom.z, log_q_z1 + log_q_z2, self.prior.log_prob(z2) + log_p_z1)

    closed_form_kl = False  # a class attribute where the VAE has a property: no closed form

    def kl_per_dim(self, mu: Tensor, logvar: Tensor) -> None:
        """No closed form for a hierarchy: the objectives use the one-draw Monte-Carlo KL."""
        return None

    def encode_code(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The top layer's Gaussian q(z2|z1) at z1 = the mean of q(z1|x): (B, latent_dim)."""
        mu, _ = self.encode(x, labels)
        return self._top_posterior(mu)

    def decode_code(self, code: Tensor, labels: Tensor | None = None) -> Tensor:
        """Top-layer codes z2 -> the mean of p(z1|z2) -> the likelihood's parameters."""
        mu_z1, _ = self._bottom_prior(code)
        return self.decode(mu_z1, labels)


def hvae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 50,
    z1_dim: PositiveInt = 100,
    hidden_dims_x_z1: Sequence[PositiveInt] = (200, 200),
    hidden_dims_z1_z2: Sequence[PositiveInt] = (100, 100),
    activation: Activation = "tanh",
    init: WeightInit = "xavier",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> HierarchicalVAE:
    """Burda et al.'s two-stochastic-layer VAE; the defaults are their MNIST network.

    ``latent_dim`` is the top layer z2 (the prior's N(0, I), the code of the pictures);
    ``z1_dim`` the bottom layer. ``hidden_dims_x_z1`` are the deterministic layers between x
    and z1 (q(z1|x) and, reversed, p(x|z1)); ``hidden_dims_z1_z2`` those between z1 and z2
    (q(z2|z1) and, reversed, p(z1|z2)). ``init="xavier"`` is Burda's Glorot-uniform with zero
    biases. The hierarchy has its own prior and posterior: only ``prior=standard`` and
    ``posterior=gaussian`` (the defaults) are accepted.
    """
    if prior is not None and type(prior) is not StandardNormal:
        raise ValueError(
            f"model=hvae has its own prior, p(z2) = N(0, I) with p(z1|z2) learned, so it does "
            f"not take prior={type(prior).__name__}; use prior=standard (the default)."
        )
    if posterior is not None and type(posterior) is not GaussianPosterior:
        raise ValueError(
            f"model=hvae has its own posterior, q(z1|x) q(z2|z1), each a diagonal Gaussian, so "
            f"it does not take posterior={type(posterior).__name__}; use posterior=gaussian "
            "(the default)."
        )
    act = ACTIVATIONS[activation]
    bottom, top = list(hidden_dims_x_z1), list(hidden_dims_z1_z2)
    vae = HierarchicalVAE(
        encoder=MLPEncoder(image_shape, bottom, z1_dim, act),
        encoder_top=MLPEncoder((z1_dim,), top, latent_dim, act),
        decoder_top=MLPEncoder((latent_dim,), top[::-1], z1_dim, act),
        decoder=MLPDecoder(z1_dim, bottom[::-1], output_shape(image_shape, output_channels), act),
        z1_dim=z1_dim,
        latent_dim=latent_dim,
    )
    for network in (vae.encoder, vae.encoder_top, vae.decoder_top, vae.decoder):
        WEIGHT_INITS[init](network)
    return vae
