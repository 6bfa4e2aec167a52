"""The pure-torch networks: shapes, initialisation, reparameterisation."""

import pytest
import torch
from torch import nn

from vae_lightning.models import VAE, conv_vae, mlp_vae
from vae_lightning.models.encoders import LOGVAR_MAX, LOGVAR_MIN


@pytest.mark.parametrize(
    ("factory", "latent_dim"), [(mlp_vae, 20), (conv_vae, 32), (mlp_vae, 2), (conv_vae, 5)]
)
def test_vae_shapes(factory, latent_dim):
    vae = factory((1, 28, 28), latent_dim=latent_dim)
    x = torch.rand(3, 1, 28, 28)
    out = vae(x)
    assert out.logits.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, latent_dim)
    assert vae.decode(torch.randn(5, latent_dim)).shape == (5, 1, 28, 28)


def test_mlp_vae_is_the_classic_784_400_20():
    vae = mlp_vae((1, 28, 28))
    linear_shapes = [m.weight.shape for m in vae.modules() if isinstance(m, nn.Linear)]
    assert linear_shapes == [(400, 784), (20, 400), (20, 400), (400, 20), (784, 400)]


def test_conv_vae_has_reference_channels():
    vae = conv_vae((1, 28, 28))
    convs = [m.out_channels for m in vae.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64]
    assert any(isinstance(m, nn.BatchNorm2d) for m in vae.modules())
    assert any(isinstance(m, nn.ELU) for m in vae.modules())


def test_conv_vae_rejects_images_smaller_than_its_stages_can_halve():
    with pytest.raises(ValueError, match=r"at least 8x8 pixels, but image_shape=\[1, 6, 32\]"):
        conv_vae((1, 6, 32))


def test_xavier_init_zero_bias():
    vae = mlp_vae((1, 28, 28), init="xavier")
    layer = vae.encoder.body[1]
    assert torch.count_nonzero(layer.bias) == 0
    bound = (6 / (784 + 400)) ** 0.5
    assert layer.weight.abs().max() <= bound
    assert layer.weight.std() > bound / 3  # uniform(-b, b) has std b/sqrt(3)


@pytest.mark.parametrize("factory", [mlp_vae, conv_vae])
def test_pytorch_init_keeps_the_layer_defaults(factory):
    vae = factory((1, 28, 28), init="pytorch")
    first = vae.encoder.body[1] if factory is mlp_vae else vae.encoder.hidden[0]
    bound = first.in_features**-0.5  # kaiming_uniform(a=sqrt(5)): uniform(+-1/sqrt(fan_in))
    assert first.weight.abs().max() <= bound  # Xavier's bound is twice as wide here
    assert first.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(first.bias) == first.out_features  # Xavier zeroes them


def test_reparameterize_statistics():
    torch.manual_seed(0)
    mu = torch.full((200_000, 1), 1.5)
    logvar = torch.full((200_000, 1), 2 * torch.log(torch.tensor(0.5)))
    z = VAE.reparameterize(mu, logvar)
    assert z.mean().item() == pytest.approx(1.5, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)


def test_reparameterize_is_differentiable():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    VAE.reparameterize(mu, logvar).sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_logvar_is_clamped():
    vae = mlp_vae((1, 28, 28), latent_dim=4)
    with torch.no_grad():
        vae.encoder.head.logvar.bias.fill_(1e4)
    _, logvar = vae.encode(torch.rand(2, 1, 28, 28))
    assert logvar.max() <= LOGVAR_MAX and logvar.min() >= LOGVAR_MIN
    assert torch.isfinite(logvar.exp()).all()
