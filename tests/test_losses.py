"""The ELBO terms against hand-computed values and independent references."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.models.losses import bernoulli_nll, elbo_terms, gaussian_kl


def test_gaussian_kl_matches_closed_form_by_hand():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), summed over dims
    expected = torch.tensor(
        [0.5 * (0 + 1 - 1 - 0) + 0.5 * (1 + 4 - 1 - math.log(4.0)), 0.5 * 4 + 0.5 * 1]
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 8), torch.randn(16, 8)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros(8), torch.ones(8)), 1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), kl_divergence(q, p))
    assert (gaussian_kl(mu, logvar) >= 0).all()
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


def test_bernoulli_nll_is_bce_summed_over_pixels():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])  # one 1x2x2 image
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    sig = torch.sigmoid
    expected = -(
        math.log(sig(torch.tensor(0.0)))
        + math.log(1 - sig(torch.tensor(2.0)))
        + math.log(1 - sig(torch.tensor(-1.0)))
        + math.log(sig(torch.tensor(3.0)))
    )
    assert bernoulli_nll(logits, x).item() == pytest.approx(expected, rel=1e-6)


def test_elbo_terms_reductions_and_beta():
    torch.manual_seed(1)
    logits = torch.randn(4, 1, 28, 28)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    rec_per_image = bernoulli_nll(logits, x)
    kl_per_image = gaussian_kl(mu, logvar)

    terms = elbo_terms(logits, x, mu, logvar, beta=1.0)
    # Sum over pixels / latents, mean over the batch: nats per image.
    torch.testing.assert_close(terms.rec, rec_per_image.mean())
    torch.testing.assert_close(terms.kl, kl_per_image.mean())
    torch.testing.assert_close(terms.loss, -terms.elbo)

    heavy = elbo_terms(logits, x, mu, logvar, beta=4.0)
    torch.testing.assert_close(heavy.loss, terms.rec + 4.0 * terms.kl)
    torch.testing.assert_close(heavy.elbo, terms.elbo)  # the ELBO does not depend on beta
