"""Decoder likelihoods: normalised densities, checked by integration and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import ContinuousBernoulli as TorchCB
from torch.distributions import Normal

from helpers.oracles import bernoulli_nll
from vae_lightning.models.likelihoods import (
    CB_TAYLOR_CUTOFF,
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    continuous_bernoulli_log_normalizer,
)
from vae_lightning.signatures import argument_problems

# Logits from lambda = 0.5 exactly, through lambda = 0.5 +- 2.5e-7 and around the Taylor cutoff,
# out to lambda = 1 - 1e-26.
LOGITS = [0.0, 1e-6, -1e-6, 1e-4, -3e-3, 0.0099, 0.05, 0.0999, -0.1001, -0.5, 1, -4, 10, -30, 60]


def simpson(values: torch.Tensor, h: float) -> torch.Tensor:
    """Composite Simpson rule over the last dimension (an odd number of points)."""
    weights = torch.ones(values.shape[-1], dtype=values.dtype)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return (values * weights).sum(-1) * h / 3


GRID = torch.linspace(0, 1, 20001, dtype=torch.float64)
H = 1 / 20000


def integral_of_unnormalised_cb(eta: float) -> float:
    """int_0^1 lambda^x (1 - lambda)^(1 - x) dx in float64, lambda = sigmoid(eta)."""
    eta64 = torch.tensor(eta, dtype=torch.float64)
    log_lam, log_one_minus = (
        -torch.nn.functional.softplus(-eta64),
        -torch.nn.functional.softplus(eta64),
    )
    return simpson(torch.exp(GRID * log_lam + (1 - GRID) * log_one_minus), H).item()


@pytest.mark.parametrize("eta", LOGITS)
def test_cb_log_normalizer_matches_numerical_integration(eta):
    """log C(lambda) = -log int lambda^x (1 - lambda)^(1 - x) dx, in float32, near 0.5 too."""
    expected = -math.log(integral_of_unnormalised_cb(eta))
    got = continuous_bernoulli_log_normalizer(torch.tensor([eta], dtype=torch.float32)).item()
    assert got == pytest.approx(expected, abs=1e-7, rel=4e-7)  # float32 rounding


def test_cb_log_normalizer_at_one_half_is_log_two_and_smooth_across_the_cutoff():
    assert continuous_bernoulli_log_normalizer(torch.zeros(1)).item() == pytest.approx(
        math.log(2), abs=1e-7
    )
    # Either side of the switch between Taylor series and closed form, in float32.
    # Adjacent float32 numbers either side of the switch from Taylor series to closed form.
    at = torch.tensor(CB_TAYLOR_CUTOFF)
    eta = torch.stack([torch.nextafter(at, torch.tensor(0.0)), at])
    below, above = continuous_bernoulli_log_normalizer(eta).tolist()
    assert abs(above - below) < 2e-7


@pytest.mark.parametrize("eta", LOGITS)
def test_cb_density_integrates_to_one_and_its_mean_matches(eta):
    likelihood = ContinuousBernoulli()
    x = GRID.float().view(-1, 1, 1, 1)  # 20001 one-pixel images
    density = likelihood.log_prob(torch.full_like(x, eta), x).double().exp()
    assert simpson(density, H).item() == pytest.approx(1.0, abs=1e-5)
    mean = simpson(density * GRID, H).item()
    assert likelihood.mean(torch.tensor([eta])).item() == pytest.approx(mean, abs=2e-6)


def test_cb_matches_torch_distributions_in_float64():
    """Ours in float32 against torch's in float64 (torch's own float32 is 4e-5 off here)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 5, 5) * 3
    x = torch.rand(4, 1, 5, 5)
    reference = TorchCB(logits=logits.double()).log_prob(x.double()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(
        ContinuousBernoulli().log_prob(logits, x).double(), reference, atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        ContinuousBernoulli().mean(logits).double(),
        TorchCB(logits=logits.double()).mean,
        atol=1e-6,
        rtol=0,
    )


def test_cb_gradients_are_finite_at_and_near_one_half():
    eta = torch.tensor([0.0, 1e-7, -1e-3, 0.02, 80.0], requires_grad=True)
    x = torch.full((5,), 0.3)
    ContinuousBernoulli().log_prob(eta.view(5, 1, 1, 1), x.view(5, 1, 1, 1)).sum().backward()
    assert torch.isfinite(eta.grad).all()
    # d/d eta of eta x - A(eta) is x - E[x]; at eta = 0, E[x] = 1/2.
    assert eta.grad[0].item() == pytest.approx(0.3 - 0.5, abs=1e-6)


def test_bernoulli_is_the_summed_bce_and_broadcasts_over_samples():
    torch.manual_seed(1)
    logits = torch.randn(3, 2, 1, 4, 4)  # 3 samples of 2 images
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.4))
    got = Bernoulli().log_prob(logits, x)
    assert got.shape == (3, 2)
    for i in range(3):
        torch.testing.assert_close(got[i], -bernoulli_nll(logits[i], x))
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))


def test_gaussian_fixed_std_matches_torch_normal():
    torch.manual_seed(2)
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    likelihood = Gaussian((1, 4, 4), std=0.2)
    reference = Normal(torch.sigmoid(logits), 0.2).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(likelihood.log_prob(logits, x), reference)
    assert list(likelihood.parameters()) == []  # nothing to learn, nothing in the optimizer


def test_gaussian_learned_std_is_one_parameter_per_pixel_with_a_floor():
    likelihood = Gaussian((1, 4, 4), std=0.3, variance="learned", min_std=0.05)
    (param,) = likelihood.parameters()
    assert param.shape == (1, 4, 4)
    with torch.no_grad():
        param[0, 0, 0] = math.log(1e-6)  # below the floor: evaluated at min_std
        param[0, 0, 1] = math.log(0.5)
    logits, x = torch.zeros(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    std = torch.full((1, 4, 4), 0.3)
    std[0, 0, 0], std[0, 0, 1] = 0.05, 0.5
    reference = Normal(torch.full_like(x, 0.5), std).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(likelihood.log_prob(logits, x), reference)
    likelihood.log_prob(logits, x).sum().backward()
    assert param.grad[0, 0, 1] != 0 and param.grad[0, 0, 0] == 0  # floored: no gradient


def test_gaussian_rejects_bad_settings():
    (problem,) = argument_problems(Gaussian, {"variance": "per-image"})
    assert problem.reason == "it should be 'fixed' or 'learned'"
    with pytest.raises(ValueError, match="min_std"):
        Gaussian((1, 4, 4), std=0.01, min_std=0.1)


def test_bernoulli_matches_torch_distributions_on_a_full_image_with_large_logits():
    """28x28 images with logits up to +-40 (a confident decoder): within 1e-3 nats of the
    float64 reference, the float32 rounding of sums over 784 pixels."""
    torch.manual_seed(2)
    logits = torch.randn(5, 3, 1, 28, 28) * 15
    logits[0] = 40.0 * torch.sign(logits[0])
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    reference = (
        torch.distributions.Bernoulli(logits=logits.double())
        .log_prob(x.double().expand_as(logits))
        .sum(dim=(-3, -2, -1))
    )
    got = Bernoulli().log_prob(logits, x)
    torch.testing.assert_close(got.double(), reference, atol=1e-3, rtol=1e-6)
