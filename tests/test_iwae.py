"""The importance-weighted estimator on a linear-Gaussian VAE, where log p(x) is known exactly.

Model: z ~ N(0, I_3), x | z ~ N(W z + b, sigma^2 I_6), so p(x) = N(b, W W^T + sigma^2 I). W has
orthogonal columns, which makes the exact posterior diagonal: a Gaussian encoder can be exact.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from helpers.oracles import gaussian_kl
from vae_lightning.models.iwae import (
    bits_per_dim,
    iwae_bound,
    iwae_log_likelihood,
    log_importance_weights,
)

DX, DZ, SIGMA, N = 6, 3, 0.5, 200


class LinearGaussian:
    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(DX, DZ, generator=g, dtype=torch.float64))
        self.scales = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
        self.W = q * self.scales  # orthogonal columns: W^T W = diag(scales^2)
        self.b = torch.randn(DX, generator=g, dtype=torch.float64)
        self.marginal = MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(DX))

    def log_px_given_z(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log N(x; W z + b, sigma^2 I) for z (n, B, DZ), x (B, DX) -> (n, B)."""
        residual = (x - z @ self.W.T - self.b) / SIGMA
        return (-0.5 * residual**2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) = p(z|x): precision I + W^T W / sigma^2 (diagonal), mean Sigma W^T (x-b)/s^2."""
        var = 1 / (1 + self.scales**2 / SIGMA**2)
        mu = (x - self.b) @ self.W / SIGMA**2 * var
        return mu, var.log().expand_as(mu)


@pytest.fixture(scope="module")
def model() -> LinearGaussian:
    return LinearGaussian()


@pytest.fixture(scope="module")
def data(model: LinearGaussian) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = model.marginal.sample((N,))
    return x, model.marginal.log_prob(x)


def test_exact_posterior_makes_every_weight_log_px(model, data):
    """With q = p(z|x), p(x, z) / q(z|x) = p(x) for every z: the ELBO is tight, at any k."""
    x, log_px = data
    mu, logvar = model.exact_posterior(x)
    gen = torch.Generator().manual_seed(1)
    log_lik, log_prior_ratio = log_importance_weights(x, mu, logvar, model.log_px_given_z, 50, gen)
    torch.testing.assert_close(log_lik + log_prior_ratio, log_px.expand(50, N), atol=1e-9, rtol=0)
    for k in (1, 7, 100):
        estimate = iwae_log_likelihood(x, mu, logvar, model.log_px_given_z, k, 30, gen)
        torch.testing.assert_close(estimate, log_px, atol=1e-9, rtol=0)
    # The same with the closed-form KL: E_q[log p(x|z)] - KL(q || p) = log p(x).
    mc_rec = log_lik.mean(0)  # 50 samples; its variance is Var of the reconstruction term
    elbo = mc_rec - gaussian_kl(mu, logvar)
    standard_error = log_lik.std(0) / math.sqrt(50)
    assert ((elbo - log_px).abs() < 5 * standard_error + 1e-9).all()


def test_elbo_below_iwae_k_below_iwae_k_prime_below_log_px(model, data):
    """E[ELBO] <= E[IWAE_k] <= E[IWAE_k'] <= log p(x) for k < k', for an inexact q.

    The expectations are estimated by averaging IWAE_k over the 5000 / k disjoint blocks of
    the same 5000 importance samples, so differences between k are far above Monte-Carlo noise.
    """
    x, log_px = data
    mu, logvar = model.exact_posterior(x)
    mu, logvar = mu + 0.3, logvar + 2 * math.log(1.5)  # shifted, 1.5x too wide
    gen = torch.Generator().manual_seed(2)
    log_lik, log_prior_ratio = log_importance_weights(
        x, mu, logvar, model.log_px_given_z, 5000, gen
    )
    log_w = log_lik + log_prior_ratio
    expected = {
        k: torch.stack([iwae_bound(block) for block in log_w.split(k)]).mean(0)
        for k in (1, 10, 100, 1000)
    }
    # k = 1 is the ELBO: E_q[log p(x|z)] - KL with the closed-form KL agrees.
    elbo = log_lik.mean(0) - gaussian_kl(mu, logvar)
    torch.testing.assert_close(elbo.mean(), expected[1].mean(), atol=0.02, rtol=0)

    ks = sorted(expected)
    for k, k_prime in zip(ks, ks[1:], strict=False):
        gain = expected[k_prime] - expected[k]
        assert gain.mean() > 5 * gain.std() / math.sqrt(N), (k, k_prime)
    gaps = [(log_px - expected[k]).mean().item() for k in ks]
    assert gaps[0] > 1.0  # this q is clearly inexact: the ELBO is more than a nat loose
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))
    last = log_px - expected[1000]
    assert last.mean() > -3 * last.std() / math.sqrt(N)  # never above log p(x), up to noise


def test_chunked_estimator_converges_to_exact_log_px(model, data):
    """IWAE_k -> log p(x): at k = 1000 within Monte-Carlo error (bias ~ Var(w/p) / 2k)."""
    x, log_px = data
    mu, logvar = model.exact_posterior(x)
    mu, logvar = mu + 0.3, logvar + 2 * math.log(1.5)
    gen = torch.Generator().manual_seed(3)
    errors = {}
    for k in (1, 1000):
        # 3000 rows per pass: 15 samples of each of the 200 points, 67 chunks for k = 1000.
        estimate = iwae_log_likelihood(x, mu, logvar, model.log_px_given_z, k, 3000, gen)
        errors[k] = estimate - log_px
    assert errors[1].mean() < -1.0
    standard_error = errors[1000].std() / math.sqrt(N)
    assert errors[1000].mean().abs() < 3 * standard_error + 2e-3, errors[1000].mean()


def test_chunks_combine_exactly_and_bound_the_rows_per_pass(model, data):
    """Chunking changes the memory, not the maths: the result is the logsumexp of all weights."""
    x, _ = data
    x = x[:10]
    mu, logvar = model.exact_posterior(x)
    mu = mu + 0.5
    calls: list[torch.Tensor] = []

    def recording(z: torch.Tensor, x_: torch.Tensor) -> torch.Tensor:
        calls.append(z.clone())
        return model.log_px_given_z(z, x_)

    gen = torch.Generator().manual_seed(4)
    estimate = iwae_log_likelihood(x, mu, logvar, recording, k=47, chunk_rows=60, generator=gen)
    assert [len(z) for z in calls] == [6] * 7 + [5]  # 60 rows // 10 images = 6 samples a pass
    assert all(z.shape[0] * z.shape[1] <= 60 for z in calls)
    z = torch.cat(calls)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_w = model.log_px_given_z(z, x) + log_prior - log_q
    torch.testing.assert_close(estimate, torch.logsumexp(log_w, 0) - math.log(47))


def test_estimator_is_deterministic_given_the_seed(model, data):
    x, _ = data
    mu, logvar = model.exact_posterior(x)
    mu = mu + 0.3

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return iwae_log_likelihood(x, mu, logvar, model.log_px_given_z, 64, 1000, gen)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_estimator_rejects_bad_arguments(model, data):
    x, _ = data
    mu, logvar = model.exact_posterior(x)
    with pytest.raises(ValueError, match="k >= 1"):
        iwae_log_likelihood(x, mu, logvar, model.log_px_given_z, k=0)


def test_bits_per_dim_by_hand():
    assert bits_per_dim(torch.tensor(784 * math.log(2)), 784).item() == pytest.approx(1.0)
    assert bits_per_dim(torch.tensor(90.0), 784).item() == pytest.approx(90 / 784 / 0.693147, 1e-5)
