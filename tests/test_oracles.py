"""The reference implementations in helpers/oracles.py, against hand-computed values: the other
tests trust them."""

import math

import pytest
import torch

from helpers.oracles import bernoulli_nll, elbo_terms, gaussian_kl


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


def test_gaussian_kl_by_hand():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    expected = torch.tensor([0.5 * (1 + 4 - 1 - math.log(4.0)), 0.5 * 4 + 0.5 * 1])
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_elbo_terms_reductions_and_beta():
    torch.manual_seed(1)
    logits = torch.randn(4, 1, 28, 28)
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    terms = elbo_terms(logits, x, mu, logvar, beta=1.0)
    # Sum over pixels / latents, mean over the batch: nats per image.
    torch.testing.assert_close(terms.rec, bernoulli_nll(logits, x).mean())
    torch.testing.assert_close(terms.kl, gaussian_kl(mu, logvar).mean())
    torch.testing.assert_close(terms.loss, -terms.elbo)
    heavy = elbo_terms(logits, x, mu, logvar, beta=4.0)
    torch.testing.assert_close(heavy.loss, terms.rec + 4.0 * terms.kl)
    torch.testing.assert_close(heavy.elbo, terms.elbo)  # the ELBO does not depend on beta
