"""The VAE: encode, reparameterize, decode (Kingma & Welling, 2014)."""

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
from vae_lightning.param_types import ImageShape

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
Activation = Literal[tuple(ACTIVATIONS)]  # the names above, as a type the config check reads


class VAEOutput(NamedTuple):
    logits: Tensor  # decoder output: the likelihood's parameter per pixel, shaped like x
    mu: Tensor  # posterior mean, (batch, latent_dim)
    logvar: Tensor  # posterior log-variance, (batch, latent_dim)
    z: Tensor  # the reparameterised sample that was decoded


class VAE(nn.Module):
    """Gaussian encoder, standard-normal prior, decoder of per-pixel likelihood parameters."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (bf16 under precision=bf16-true)."""
        return next(self.parameters()).dtype

    # Inputs are taken in the weights' dtype: images arrive as float32 from the data module,
    # and z is sampled in at least float32 because its log-densities sum many terms.
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x.to(self.dtype))

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): a sample differentiable in mu and logvar."""
        return gaussian.sample(mu, logvar)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.dtype))

    def forward(self, x: Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode(z), mu, logvar, z)


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
) -> VAE:
    """Fully connected VAE; the defaults are Kingma & Welling's 784-400-20.

    ``output_channels``: values per pixel the decoder emits (the likelihood's
    ``decoder_channels``); None is one per image channel.
    """
    act = ACTIVATIONS[activation]
    encoder = MLPEncoder(image_shape, hidden_dims, latent_dim, act)
    decoder = MLPDecoder(
        latent_dim, list(hidden_dims)[::-1], output_shape(image_shape, output_channels), act
    )
    vae = VAE(encoder, decoder, latent_dim)
    WEIGHT_INITS[init](vae)
    return vae


def conv_vae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 32,
    channels: Annotated[Sequence[PositiveInt], Len(3, 3)] = (16, 32, 64),
    hidden_dim: PositiveInt = 256,
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
) -> VAE:
    """The reference convolutional VAE: conv 16/32/64, BatchNorm, ELU, 256 hidden units."""
    encoder = ConvEncoder(image_shape, channels, hidden_dim, latent_dim)
    decoder = ConvDecoder(
        latent_dim, hidden_dim, channels, output_shape(image_shape, output_channels)
    )
    vae = VAE(encoder, decoder, latent_dim)
    WEIGHT_INITS[init](vae)
    return vae
