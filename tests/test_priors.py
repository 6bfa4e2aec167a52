"""Learned priors against independent references: torch.distributions mixtures built from the
same parameters (for the VampPrior, from the encoder's outputs at the pseudo-inputs)."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vae_lightning.models.priors import MixtureOfGaussians, StandardNormal, VampPrior
from vae_lightning.models.vae import mlp_vae

D = 4
IMAGE_SHAPE = (1, 6, 6)


def reference_mixture(mu, logvar, logits) -> MixtureSameFamily:
    components = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    return MixtureSameFamily(Categorical(logits=logits), components)


def spread_mog(num_components=3, dtype=torch.float32) -> MixtureOfGaussians:
    torch.manual_seed(0)
    prior = MixtureOfGaussians(D, num_components).to(dtype)
    with torch.no_grad():
        prior.logvars.normal_(0.0, 1.0)  # unequal, some small variances
        prior.logits.normal_(0.0, 1.0)  # unequal weights
    return prior


def vamp_net(num_components=5, dtype=torch.float32):
    torch.manual_seed(0)
    prior = VampPrior(D, IMAGE_SHAPE, num_components, init_mean=0.5, init_std=0.3)
    return mlp_vae(IMAGE_SHAPE, D, hidden_dims=(16,), prior=prior).to(dtype)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mixture_of_gaussians_log_prob_is_the_mixture_density(dtype, tol):
    prior = spread_mog(dtype=dtype)
    z = 3 * torch.randn(2, 7, D, dtype=dtype)  # (k, B, D), also far from every component
    expected = reference_mixture(prior.means, prior.logvars, prior.logits).log_prob(z)
    actual = prior.log_prob(z)
    assert actual.shape == (2, 7) and actual.dtype == dtype
    torch.testing.assert_close(actual, expected.detach(), rtol=tol, atol=tol)


def test_vamp_prior_log_prob_is_the_mixture_of_encoder_posteriors_at_the_pseudo_inputs():
    net = vamp_net(dtype=torch.float64)
    pseudo_images = net.prior.pseudo_inputs.clamp(0.0, 1.0)  # the hard tanh
    mu, logvar = net.encoder(pseudo_images)
    uniform = torch.zeros(len(mu), dtype=torch.float64)
    z = torch.randn(3, 8, D, dtype=torch.float64)
    expected = reference_mixture(mu, logvar, uniform).log_prob(z)
    torch.testing.assert_close(net.prior.log_prob(z), expected.detach(), rtol=1e-10, atol=1e-10)


def test_one_component_at_the_standard_normal_is_the_standard_prior():
    prior = MixtureOfGaussians(D, num_components=1)
    with torch.no_grad():
        prior.means.zero_()
    z = torch.randn(5, 3, D)
    torch.testing.assert_close(prior.log_prob(z), StandardNormal(D).log_prob(z))
    assert prior.kl_per_dim(z[0], z[0]) is None  # no closed form: Monte-Carlo KL


def test_learned_priors_have_no_closed_form_kl():
    mu = torch.zeros(2, D)
    net = vamp_net()
    assert net.kl_per_dim(mu, mu) is None
    assert mlp_vae(IMAGE_SHAPE, D, prior=spread_mog()).kl_per_dim(mu, mu) is None


def test_mixture_samples_follow_the_weights_and_components():
    prior = MixtureOfGaussians(D, num_components=2)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-10.0] * D, [10.0] * D]))
        prior.logvars.fill_(math.log(0.25))
        prior.logits.copy_(torch.tensor([0.0, math.log(4.0)]))  # weights 0.2, 0.8
    with torch.no_grad():
        z = prior.sample(20000, torch.Generator().manual_seed(1))
        again = prior.sample(20000, torch.Generator().manual_seed(1))
    upper = z[:, 0] > 0
    assert upper.float().mean().item() == pytest.approx(0.8, abs=0.02)
    torch.testing.assert_close(z[upper].mean(0), torch.full((D,), 10.0), rtol=0, atol=0.02)
    torch.testing.assert_close(z[upper].std(0), torch.full((D,), 0.5), rtol=0, atol=0.02)
    assert torch.equal(z, again)  # the generator is the only source of randomness


def test_vamp_samples_come_from_the_encoders_posteriors_at_the_pseudo_inputs():
    net = vamp_net(num_components=3)
    with torch.no_grad():
        net.encoder.head.logvar.bias.fill_(-12.0)  # tiny variances: samples sit on the means
        net.encoder.head.logvar.weight.zero_()
        mu = net.encoder(net.prior.pseudo_inputs.clamp(0.0, 1.0))[0]
        z = net.sample_prior(300, torch.Generator().manual_seed(0))
    nearest = torch.cdist(z, mu).min(dim=1).values
    assert nearest.max() < 0.02
    picked = torch.cdist(z, mu).argmin(dim=1).bincount(minlength=3)
    assert (picked > 60).all()  # uniform weights: about 100 each


def test_vamp_prior_does_not_own_the_encoder():
    net = vamp_net()
    keys = list(net.state_dict())
    assert [k for k in keys if k.startswith("prior.")] == ["prior.pseudo_inputs"]
    names = [name for name, _ in net.named_parameters()]
    assert len(names) == len(set(names)) and "prior.pseudo_inputs" in names
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in {id(p): p for p in net.parameters()}.values()
    )
    assert not any(name.startswith("prior.") for name, _ in net.named_modules() if name != "prior")


@pytest.mark.parametrize("prior_name", ["mog", "vamp"])
def test_gradients_reach_every_prior_parameter_and_the_encoder(prior_name):
    net = vamp_net() if prior_name == "vamp" else mlp_vae(IMAGE_SHAPE, D, prior=spread_mog())
    net.prior.log_prob(torch.randn(2, 3, D)).sum().backward()
    for name, param in net.prior.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    if prior_name == "vamp":
        assert net.encoder.head.mu.weight.grad.abs().sum() > 0  # through the pseudo-inputs
