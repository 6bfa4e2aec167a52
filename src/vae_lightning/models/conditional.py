"""The conditional VAE (Sohn et al., 2015; the generative side of Kingma et al.'s 2014 M2):
q(z|x, y), p(z) and p(x|z, y) for a class label y.

It wraps the encoders and decoders of the unconditional models rather than copying them: the
encoder is built for the image with the label joined to it (concatenated to the flattened
image for an MLP, as constant extra input planes for a conv body) and the decoder for z with
the label's one-hot concatenated. The prior does not depend on y, so the latent interface
(``draw_latents``, ``kl_per_dim``) is the VAE's own, and every objective computes its bound
on log p(x|y) instead of log p(x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Len
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models.decoders import ConvDecoder, MLPDecoder
from vae_lightning.models.encoders import ConvEncoder, MLPEncoder
from vae_lightning.models.posteriors import Posterior
from vae_lightning.models.priors import Prior
from vae_lightning.models.vae import (
    ACTIVATIONS,
    VAE,
    Activation,
    WeightInit,
    init_networks,
    output_shape,
)
from vae_lightning.param_types import ImageShape

# How the label joins the image at the encoder's input: ``flat`` concatenates the one-hot to
# the flattened image (an MLP body), ``planes`` adds one constant plane per class (a conv body,
# which needs an image-shaped input).
LabelInput = Literal["flat", "planes"]


def reads_encoder(prior: Prior | type[Prior]) -> bool:
    """Whether a prior is defined through the encoder (it overrides ``Prior.bind``, like the
    VampPrior and its pseudo-inputs). Such a prior has no label to give a conditional encoder."""
    cls = prior if isinstance(prior, type) else type(prior)
    return getattr(cls, "bind", Prior.bind) is not Prior.bind


def conditioned_input_shape(
    image_shape: Sequence[int], num_classes: int, label_input: LabelInput
) -> tuple[int, ...]:
    """The shape the encoder is built for: the image with the label joined to it."""
    channels, *size = image_shape
    if label_input == "flat":
        return (math.prod(image_shape) + num_classes,)
    return (channels + num_classes, *size)


class ConditionalVAE(VAE):
    """A VAE whose encoder and decoder also see the class label: q(z|x, y) and p(x|z, y).

    ``encoder`` takes inputs of :func:`conditioned_input_shape`, ``decoder`` codes of
    ``latent_dim + num_classes`` values. Labels are class indices (B,) or, where a picture
    mixes classes (interpolations), rows of class probabilities (B, num_classes).
    """

    conditional = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        num_classes: int,
        label_input: LabelInput = "flat",
        prior: Prior | None = None,
        posterior: Posterior | None = None,
    ) -> None:
        if prior is not None and reads_encoder(prior):
            raise ValueError(
                f"the prior {type(prior).__name__} is defined through the encoder on inputs "
                "that have no label, which a conditional VAE's encoder needs."
            )
        super().__init__(encoder, decoder, latent_dim, prior, posterior)
        self.num_classes = num_classes
        self.label_input = label_input

    def one_hot(self, labels: Tensor | None) -> Tensor:
        """(B, num_classes) in the weights' dtype: the one-hot of class indices, or class
        probabilities as given."""
        if labels is None:
            raise ValueError(
                "the conditional VAE needs the class labels: call encode(x, labels) and "
                "decode(z, labels)."
            )
        if labels.is_floating_point():
            return labels.to(self.dtype)
        return F.one_hot(labels.long(), self.num_classes).to(self.dtype)

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The Gaussian q(z|x, y): (mu, logvar), each (B, D)."""
        x, y = x.to(self.dtype), self.one_hot(labels)
        if self.label_input == "flat":
            joined = torch.cat([x.flatten(1), y], dim=1)
        else:
            planes = y[:, :, None, None].expand(-1, -1, *x.shape[2:])
            joined = torch.cat([x, planes], dim=1)
        return self.encoder(joined)

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """p(x|z, y): codes (B, D) and labels -> the likelihood's parameters per pixel."""
        return self.decoder(torch.cat([z.to(self.dtype), self.one_hot(labels)], dim=1))


def mlp_cvae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 20,
    num_classes: PositiveInt = 10,
    hidden_dims: Sequence[PositiveInt] = (400,),
    activation: Activation = "relu",
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> ConditionalVAE:
    """The MLP VAE of ``mlp_vae`` conditioned on the label: the one-hot is concatenated to
    the flattened image (784 + 10 inputs on MNIST) and to z (20 + 10)."""
    act = ACTIVATIONS[activation]
    encoder = MLPEncoder(
        conditioned_input_shape(image_shape, num_classes, "flat"), hidden_dims, latent_dim, act
    )
    decoder = MLPDecoder(
        latent_dim + num_classes,
        list(hidden_dims)[::-1],
        output_shape(image_shape, output_channels),
        act,
    )
    vae = ConditionalVAE(encoder, decoder, latent_dim, num_classes, "flat", prior, posterior)
    init_networks(vae, init)
    return vae


def conv_cvae(
    image_shape: ImageShape,
    latent_dim: PositiveInt = 32,
    num_classes: PositiveInt = 10,
    channels: Annotated[Sequence[PositiveInt], Len(3, 3)] = (16, 32, 64),
    hidden_dim: PositiveInt = 256,
    init: WeightInit = "pytorch",
    output_channels: PositiveInt | None = None,
    prior: Prior | None = None,
    posterior: Posterior | None = None,
) -> ConditionalVAE:
    """The reference conv VAE of ``conv_vae`` conditioned on the label: one constant input
    plane per class for the encoder, the one-hot concatenated to z for the decoder."""
    encoder = ConvEncoder(
        conditioned_input_shape(image_shape, num_classes, "planes"),
        channels,
        hidden_dim,
        latent_dim,
    )
    decoder = ConvDecoder(
        latent_dim + num_classes, hidden_dim, channels, output_shape(image_shape, output_channels)
    )
    vae = ConditionalVAE(encoder, decoder, latent_dim, num_classes, "planes", prior, posterior)
    init_networks(vae, init)
    return vae
