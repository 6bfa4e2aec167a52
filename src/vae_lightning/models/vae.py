"""The VAE: encode, reparameterize, decode (Kingma & Welling, 2014), with a configurable prior
and posterior."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal, NamedTuple

import torch
from annotated_types import Len
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models import gaussian
from vae_lightning.models.decoders import ConvDecoder, MLPDecoder
from vae_lightning.models.encoders import ConvEncoder, MLPEncoder
from vae_lightning.models.posteriors import GaussianPosterior, LatentSample, Posterior
from vae_lightning.models.priors import Prior, StandardNormal
from vae_lightning.models.stages import check_image_fits
from vae_lightning.param_types import ImageShape

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
Activation = Literal[tuple(ACTIVATIONS)]  # the names above, as a type the config check reads


class VAEOutput(NamedTuple):
    logits: Tensor  # decoder output: the likelihood's parameters per pixel
    mu: Tensor  # the encoder's Gaussian mean, (batch, latent_dim)
    logvar: Tensor  # the encoder's Gaussian log-variance, (batch, latent_dim)
    z: Tensor  # the reparameterised code that was decoded (after the flow, if any)


class VAE(nn.Module):
    """Encoder, posterior q(z|x), prior p(z) and decoder of per-pixel likelihood parameters.

    The classic VAE has a Gaussian posterior and a standard-normal prior; ``prior`` and
    ``posterior`` swap in learned priors (models/priors.py) and flows (models/flows.py). Every
    objective and estimator works through :meth:`draw_latents` and :meth:`kl_per_dim`, so a
    family that overrides them (the hierarchical VAE) is trained and evaluated by the same
    code. ``labels`` are ignored by unconditional models (the conditional VAE uses them).

    The pictures (samples, traversals, interpolations) walk in the space of the codes of
    :meth:`encode_code`, decoded by :meth:`decode_code`: z for one stochastic layer, the top
    layer for a hierarchy.
    """

    # Whether encode/decode use the class labels (the conditional VAE): callers pass them.
    conditional = False

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        prior: Prior | None = None,
        posterior: Posterior | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.prior = prior if prior is not None else StandardNormal(latent_dim)
        self.posterior = posterior if posterior is not None else GaussianPosterior(latent_dim)
        self.prior.bind(encoder)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (bf16 under precision=bf16-true)."""
        return next(self.parameters()).dtype

    # Inputs are taken in the weights' dtype: images arrive as float32 from the data module,
    # and z is sampled in at least float32 because its log-densities sum many terms.
    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder's Gaussian: (mu, logvar), each (B, D)."""
        return self.encoder(x.to(self.dtype))

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): a sample differentiable in mu and logvar."""
        return gaussian.sample(mu, logvar)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Codes (B, D) -> the likelihood's parameters per pixel, (B, channels, H, W)."""
        return self.decoder(z.to(self.dtype))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> VAEOutput:
        mu, logvar = self.encode(x, labels)
        z = self.posterior.sample_one(mu, logvar)
        return VAEOutput(self.decode(z, labels), mu, logvar, z)

    def draw_latents(
        self, mu: Tensor, logvar: Tensor, k: int, generator: torch.Generator | None = None
    ) -> LatentSample:
        """k codes per image from q(z|x) given the encoder's output, with log q and log p."""
        z, log_q = self.posterior.sample(mu, logvar, k, generator)
        return LatentSample(z, log_q, self.prior.log_prob(z))

    @property
    def closed_form_kl(self) -> bool:
        """Whether KL(q(z|x) || p(z)) has a closed form: a Gaussian posterior and a prior with
        one. Otherwise the objectives estimate it by Monte Carlo."""
        return self.posterior.is_gaussian and self.prior.has_closed_form_kl

    def kl_per_dim(self, mu: Tensor, logvar: Tensor) -> Tensor | None:
        """KL(q(z|x) || p(z)) per latent dimension in closed form, (B, D), when there is one
        (:attr:`closed_form_kl`); None otherwise."""
        return self.prior.kl_per_dim(mu, logvar) if self.closed_form_kl else None

    def encode_code(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The Gaussian (mu, logvar) of the code the pictures walk in, each (B, latent_dim)."""
        return self.encode(x, labels)

    def decode_code(self, code: Tensor, labels: Tensor | None = None) -> Tensor:
        """Decode codes of :meth:`encode_code` or :meth:`sample_prior` to the likelihood's
        parameters."""
        return self.decode(code, labels)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n codes from the prior, (n, latent_dim), for :meth:`decode_code`."""
        return self.prior.sample(n, generator)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every linear and (transposed) conv layer."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def keep_pytorch_init(module: nn.Module) -> None:
    """Leave PyTorch's layer defaults (uniform +-1/sqrt(fan_in) weights and biases)."""


# `init` of the model configs: "xavier" is the reference design's, "pytorch" what the
# pytorch/examples VAE uses (so the quality benchmark can match that recipe exactly).
WEIGHT_INITS: dict[str, Callable[[nn.Module], None]] = {
    "xavier": init_xavier,
    "pytorch": keep_pytorch_init,
}
WeightInit = Literal[tuple(WEIGHT_INITS)]


def init_networks(vae: VAE, init: WeightInit) -> None:
    """Apply ``init`` to the encoder and decoder; priors and flows keep their own (a flow
    starts at the identity)."""
    WEIGHT_INITS[init](vae.encoder)
    WEIGHT_INITS[init](vae.decoder)


def output_shape(image_shape: Sequence[int], output_channels: int | None) -> tuple[int, ...]:
    """The decoder's output shape: ``output_channels`` (default: the image's) by H by W."""
    channels, *size = image_shape
    return (output_channels or channels, *size)


def mlp_vae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 20,
    hidden_dims: Sequence[PositiveInt] = (400,),
    activation: Activation = "relu",
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> VAE:
    """Fully connected VAE; the defaults are Kingma & Welling's 784-400-20.

    Every model factory takes, besides its own architecture: ``output_channels``, the values
    per pixel the decoder emits (the likelihood's ``decoder_channels``; None is one per image
    channel), and the ``prior`` and ``posterior`` modules (None: N(0, I) and the Gaussian).
    """
    act = ACTIVATIONS[activation]
    encoder = MLPEncoder(image_shape, hidden_dims, latent_dim, act)
    decoder = MLPDecoder(
        latent_dim, list(hidden_dims)[::-1], output_shape(image_shape, output_channels), act
    )
    vae = VAE(encoder, decoder, latent_dim, prior, posterior)
    init_networks(vae, init)
    return vae


def conv_vae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 32,
    channels: Annotated[Sequence[PositiveInt], Len(1)] = (16, 32, 64),
    hidden_dim: PositiveInt = 256,
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> VAE:
    """The reference convolutional VAE: conv 16/32/64, BatchNorm, ELU, 256 hidden units.

    Each entry of ``channels`` is one stride-2 stage halving the resolution (28 -> 14 -> 7
    -> 4); the decoder walks the same sizes back up, so any image of at least 2**stages
    pixels a side works (28, 32, 64, non-square), with any number of channels.
    """
    check_image_fits(image_shape, len(channels), f"conv_vae with channels={list(channels)}")
    encoder = ConvEncoder(image_shape, channels, hidden_dim, latent_dim)
    decoder = ConvDecoder(
        latent_dim, hidden_dim, channels, output_shape(image_shape, output_channels)
    )
    vae = VAE(encoder, decoder, latent_dim, prior, posterior)
    init_networks(vae, init)
    return vae
