"""Objectives change the loss exactly as specified; the ELBO terms stay the true ELBO."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from helpers.oracles import elbo_terms
from vae_lightning.models import mlp_vae
from vae_lightning.models.disentangling import BetaTC, Capacity
from vae_lightning.models.likelihoods import Bernoulli, ContinuousBernoulli
from vae_lightning.models.objectives import ELBO, IWAE, KLSchedule
from vae_lightning.signatures import argument_problems


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return mlp_vae((1, 28, 28), latent_dim=6, hidden_dims=[32])


@pytest.fixture(scope="module")
def images():
    return torch.bernoulli(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


def test_warmup_is_linear_from_zero_to_one():
    schedule = KLSchedule(kl_warmup_steps=100)
    assert [schedule(s) for s in (0, 25, 50, 99, 100, 5000)] == [0, 0.25, 0.5, 0.99, 1, 1]
    assert KLSchedule()(0) == 1.0 and not KLSchedule().active


def test_cyclical_annealing_restarts_the_ramp_every_cycle():
    schedule = KLSchedule(kl_warmup_steps=50, cycle_steps=100)
    steps = (0, 25, 50, 99, 100, 125, 150, 210)
    assert [schedule(s) for s in steps] == [0, 0.5, 1, 1, 0, 0.5, 1, 0.2]


@pytest.mark.parametrize(
    ("warmup", "cycle", "match"),
    [(-1, 0, ">= 0"), (0, 100, "kl_warmup_steps=50"), (200, 100, "<= cycle_steps")],
)
def test_bad_schedules_say_what_to_set(warmup, cycle, match):
    with pytest.raises(ValueError, match=match):
        KLSchedule(warmup, cycle)


def test_elbo_objective_with_bernoulli_is_the_foundation_elbo(net, images):
    torch.manual_seed(2)
    terms = ELBO()(net, Bernoulli(), images, kl_weight=3.0)
    torch.manual_seed(2)
    out = net(images)
    reference = elbo_terms(out.logits, images, out.mu, out.logvar, beta=3.0)
    for name in ("loss", "rec", "kl", "elbo"):
        torch.testing.assert_close(getattr(terms, name), getattr(reference, name))


def test_free_bits_floor_each_dimensions_batch_mean_kl(net, images):
    torch.manual_seed(3)
    out = net(images)
    q = Normal(out.mu, torch.exp(0.5 * out.logvar))
    kl_dims = kl_divergence(q, Normal(0.0, 1.0)).mean(0)  # (6,): batch mean per dimension
    free_bits = kl_dims.median().item()  # some dimensions below the floor, some above
    assert (kl_dims < free_bits).any() and (kl_dims > free_bits).any()
    rec = -Independent(torch.distributions.Bernoulli(logits=out.logits), 3).log_prob(images)

    torch.manual_seed(3)
    terms = ELBO(free_bits=free_bits)(net, Bernoulli(), images, kl_weight=0.7)
    expected_penalty = sum(max(free_bits, kl) for kl in kl_dims.tolist())
    torch.testing.assert_close(terms.loss, rec.mean() + 0.7 * torch.tensor(expected_penalty))
    # The reported terms are the true ELBO's, untouched by free bits.
    torch.testing.assert_close(terms.kl, kl_dims.sum())
    torch.testing.assert_close(terms.elbo, -(rec.mean() + kl_dims.sum()))


def test_kl_weight_scales_only_the_kl_term(net, images):
    losses = {}
    for weight in (0.0, 0.25, 1.0):
        torch.manual_seed(4)
        losses[weight] = ELBO()(net, Bernoulli(), images, kl_weight=weight)
    rec, kl = losses[1.0].rec, losses[1.0].kl
    torch.testing.assert_close(losses[0.0].loss, rec)
    torch.testing.assert_close(losses[0.25].loss, rec + 0.25 * kl)
    assert len({terms.elbo.item() for terms in losses.values()}) == 1


def test_iwae_k1_is_the_elbo_with_a_sampled_kl(net, images):
    """At the same z: loss = -log p(x|z) + log q(z|x) - log p(z); rec and kl as the ELBO's."""
    torch.manual_seed(5)
    terms = IWAE(k=1)(net, Bernoulli(), images, kl_weight=1.0)
    torch.manual_seed(5)
    elbo = ELBO()(net, Bernoulli(), images, kl_weight=1.0)
    for name in ("rec", "kl", "elbo"):
        torch.testing.assert_close(getattr(terms, name), getattr(elbo, name))
    torch.manual_seed(5)  # the same draw again, by hand with torch.distributions
    mu, logvar = net.encode(images)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, *mu.shape)[0]
    q, prior = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1), Normal(0.0, 1.0)
    log_lik = -elbo_terms(net.decode(z), images, mu, logvar, 1.0).rec * len(images)
    expected = -(log_lik + prior.log_prob(z).sum() - q.log_prob(z).sum()) / len(images)
    torch.testing.assert_close(terms.loss, expected, rtol=1e-5, atol=1e-4)


def test_iwae_k1_loss_has_the_elbo_loss_as_expectation(net, images):
    """Over 8192 draws for one image, IWAE_1's mean loss is the closed-form-KL ELBO loss."""
    x = images[:1].expand(8192, -1, -1, -1)
    torch.manual_seed(6)
    iwae = IWAE(k=1)(net, Bernoulli(), x, kl_weight=1.0)
    torch.manual_seed(6)
    elbo = ELBO()(net, Bernoulli(), x, kl_weight=1.0)
    # Same z, so the difference is the sampled KL minus the exact one, whose sd we measure.
    mu, logvar = net.encode(images[:1])
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((8192,))
    sampled_kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    tolerance = 4 * sampled_kl.std() / math.sqrt(8192)
    assert (iwae.loss - elbo.loss).abs() < tolerance


def test_iwae_weight_scales_the_prior_ratio_inside_the_logsumexp(net, images):
    """loss = -mean log (1/k) sum_i exp(log p(x|z_i) + w (log p(z_i) - log q(z_i|x)))."""
    k, weight = 3, 0.4
    torch.manual_seed(7)
    terms = IWAE(k=k)(net, ContinuousBernoulli(), images * 0.8, kl_weight=weight)
    torch.manual_seed(7)
    mu, logvar = net.encode(images * 0.8)
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(k, *mu.shape)
    log_lik = torch.stack(
        [ContinuousBernoulli().log_prob(net.decode(zi), images * 0.8) for zi in z]
    )
    log_ratio = (Normal(0.0, 1.0).log_prob(z) - Normal(mu, std).log_prob(z)).sum(-1)
    expected = -(torch.logsumexp(log_lik + weight * log_ratio, 0) - math.log(k)).mean()
    torch.testing.assert_close(terms.loss, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.rec, -log_lik[0].mean())


def test_iwae_bound_is_tighter_than_the_elbo_on_average(net, images):
    torch.manual_seed(8)
    x = images.repeat(64, 1, 1, 1)
    bounds = {k: -IWAE(k=k)(net, Bernoulli(), x, 1.0).loss.item() for k in (1, 20)}
    assert bounds[20] > bounds[1]


def test_bad_objectives_are_rejected_by_their_signatures():
    assert [p.parameter for p in argument_problems(IWAE, {"k": 0})] == ["k"]
    assert [p.parameter for p in argument_problems(ELBO, {"free_bits": -1})] == ["free_bits"]


@pytest.mark.parametrize(
    "objective",
    [ELBO(free_bits=0.1), IWAE(k=3), BetaTC(dataset_size=100), Capacity(capacity_steps=10)],
    ids=["elbo", "iwae", "beta_tc", "capacity"],
)
def test_a_given_posterior_gives_the_same_numbers(net, images, objective):
    """The test step encodes once and hands (mu, logvar) over: nothing may change."""
    torch.manual_seed(9)
    encoded_inside = objective(net, Bernoulli(), images, kl_weight=0.5)
    posterior = net.encode(images)
    torch.manual_seed(9)
    handed_over = objective(net, Bernoulli(), images, kl_weight=0.5, posterior=posterior)
    for inside, given in zip(encoded_inside[:-1], handed_over[:-1], strict=True):
        assert torch.equal(inside, given)
    assert encoded_inside.extras.keys() == handed_over.extras.keys()
    for name, inside in encoded_inside.extras.items():
        assert torch.equal(inside, handed_over.extras[name])
