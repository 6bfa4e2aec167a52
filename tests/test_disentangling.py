"""beta-TCVAE and the capacity objective against closed forms and independent references
(torch.distributions mixtures in float64), then trained for a few steps in real runs whose
TensorBoard scalars are read back."""

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from helpers.events import scalar_series, scalars
from helpers.runs import train_run
from vae_lightning.errors import ConfigError
from vae_lightning.models import mlp_vae
from vae_lightning.models.disentangling import (
    BETA_TC_NEEDS_GAUSSIAN,
    BetaTC,
    Capacity,
    kl_decomposition,
)
from vae_lightning.models.likelihoods import Bernoulli
from vae_lightning.models.objectives import ELBO
from vae_lightning.models.posteriors import Posterior
from vae_lightning.signatures import argument_problems

TRAIN_IMAGES = 500  # the generated training split (helpers.data.idx_data)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return mlp_vae((1, 28, 28), latent_dim=6, hidden_dims=[32])


@pytest.fixture(scope="module")
def images():
    return torch.bernoulli(torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


def codes(mu: Tensor, logvar: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """One code per posterior, with log q(z|x) and log p(z) under N(0, I), from torch."""
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
    z = z.to(mu.dtype)
    log_q = Independent(Normal(mu, std), 1).log_prob(z)
    log_p = Independent(Normal(torch.zeros_like(z), torch.ones_like(z)), 1).log_prob(z)
    return z, log_q, log_p


def exact_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, log_q, log_p) -> dict:
    """MI, TC and DWKL with the exact aggregate q(z) = 1/N sum_n q(z|x_n) of the N
    posteriors (mu, logvar), as torch.distributions mixtures."""
    std = (0.5 * logvar).exp()
    uniform = Categorical(logits=torch.zeros(len(mu), dtype=mu.dtype))
    log_qz = MixtureSameFamily(uniform, Independent(Normal(mu, std), 1)).log_prob(z)
    log_marginals = sum(
        MixtureSameFamily(uniform, Normal(mu[:, d], std[:, d])).log_prob(z[:, d])
        for d in range(mu.shape[1])
    )
    return {
        "mi": (log_q - log_qz).mean(),
        "tc": (log_qz - log_marginals).mean(),
        "dwkl": (log_marginals - log_p).mean(),
    }


def grid_posteriors(correlated: bool) -> tuple[Tensor, Tensor]:
    """49 posteriors N(mu_n, 0.3^2 I) in 2-D: means on a 7x7 grid, whose uniform mixture is
    the product of its marginals (total correlation 0), or on the diagonal (correlated)."""
    values = torch.linspace(-2, 2, 7, dtype=torch.float64)
    if correlated:
        mu = torch.stack([values, values], -1).repeat(7, 1)
    else:
        mu = torch.cartesian_prod(values, values)
    return mu, torch.full_like(mu, math.log(0.09))


@pytest.mark.parametrize("estimator", ["mws", "stratified"])
def test_the_three_terms_sum_to_the_sampled_kl_exactly(estimator):
    """MI + TC + DWKL = mean(log q(z|x) - log p(z)) at the drawn codes: an algebraic identity,
    since the same log q(z) and sum_d log q(z_d) enter two terms each (any estimator)."""
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    logvar = torch.randn(32, 5, generator=gen, dtype=torch.float64) - 1
    z, log_q, log_p = codes(mu, logvar, seed=4)
    parts = kl_decomposition(z, mu, logvar, log_q, log_p, 1000, estimator)
    assert sum(parts).item() == pytest.approx((log_q - log_p).mean().item(), abs=1e-10)


@pytest.mark.parametrize("correlated", [False, True], ids=["factorised", "correlated"])
def test_stratified_estimate_over_the_whole_data_is_the_exact_decomposition(correlated):
    """With the whole data set as the batch (M = N), the stratified weights are all 1/N: the
    estimate is the exact aggregate, so a factorised aggregate has TC = 0 and a correlated
    one the TC of the torch.distributions mixture."""
    mu, logvar = grid_posteriors(correlated)
    z, log_q, log_p = codes(mu, logvar, seed=5)
    parts = kl_decomposition(z, mu, logvar, log_q, log_p, len(mu), "stratified")
    exact = exact_decomposition(z, mu, logvar, log_q, log_p)
    for name, value in parts._asdict().items():
        assert value.item() == pytest.approx(exact[name].item(), abs=1e-9), name
    if correlated:
        assert parts.tc > 0.5
    else:
        assert abs(parts.tc.item()) < 1e-9


def test_mws_over_the_whole_data_is_offset_by_known_constants():
    """MWS divides by N M: with M = N, log q(z) reads log N low and each log q(z_d) too, so
    MI is log N high, TC (D - 1) log N high and DWKL D log N low (their sum unchanged)."""
    mu, logvar = grid_posteriors(correlated=False)
    z, log_q, log_p = codes(mu, logvar, seed=6)
    n, dims = mu.shape
    parts = kl_decomposition(z, mu, logvar, log_q, log_p, n, "mws")
    exact = exact_decomposition(z, mu, logvar, log_q, log_p)
    offsets = {"mi": math.log(n), "tc": (dims - 1) * math.log(n), "dwkl": -dims * math.log(n)}
    for name, value in parts._asdict().items():
        assert value.item() == pytest.approx(exact[name].item() + offsets[name], abs=1e-9)


def test_beta_tc_weights_each_term_and_keeps_the_true_elbo(net, images):
    torch.manual_seed(7)
    terms = BetaTC(alpha=0.5, beta=6.0, gamma=2.0)(net, Bernoulli(), images, kl_weight=0.5)
    parts = terms.extras
    assert set(parts) == {"mi", "tc", "dwkl"}
    penalty = 0.5 * parts["mi"] + 6.0 * parts["tc"] + 2.0 * parts["dwkl"]
    torch.testing.assert_close(terms.loss, terms.rec + 0.5 * penalty)
    mu, logvar = net.encode(images)
    closed_form = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    kl = torch.distributions.kl_divergence(closed_form, prior).mean()
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.elbo, -(terms.rec + kl))
    assert torch.equal(terms.bound, terms.elbo)


def test_unit_weights_give_the_elbo_loss_up_to_the_kl_estimator(net, images):
    """alpha = beta = gamma = 1: rec plus the sampled KL. The same seed draws the same codes
    as the ELBO objective, so the reconstruction terms are equal and the losses differ by
    the sampled KL's error alone, within its Monte-Carlo error on a large batch."""
    x = images.repeat(64, 1, 1, 1)
    torch.manual_seed(8)
    unit = BetaTC(alpha=1.0, beta=1.0, gamma=1.0)(net, Bernoulli(), x, kl_weight=1.0)
    torch.manual_seed(8)
    elbo = ELBO()(net, Bernoulli(), x, kl_weight=1.0)
    torch.testing.assert_close(unit.rec, elbo.rec)
    sampled_kl = sum(unit.extras.values())
    torch.testing.assert_close(unit.loss, unit.rec + sampled_kl)
    # The sampled KL's standard error over these 1024 images, from independent draws.
    mu, logvar = net.encode(x)
    draws = net.draw_latents(mu, logvar, 1)
    per_image = (draws.log_q - draws.log_p)[0]
    standard_error = per_image.std() / math.sqrt(len(per_image))
    assert abs((unit.loss - elbo.loss).item()) < 4 * standard_error.item()


def test_beta_tc_gradients_flow_to_encoder_and_decoder(net, images):
    net.zero_grad()
    torch.manual_seed(9)
    BetaTC()(net, Bernoulli(), images, kl_weight=1.0).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.zero_grad()


class ShiftedPosterior(Posterior):
    """A non-Gaussian-marked posterior: the encoder's Gaussian moved by one (log det 0)."""

    is_gaussian = False

    def transform(self, z0: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return z0 + 1.0, z0.new_zeros(z0.shape[:-1])


def test_beta_tc_refuses_a_posterior_without_per_dimension_gaussian_form(images):
    flow_net = mlp_vae((1, 28, 28), latent_dim=4, hidden_dims=[16], posterior=ShiftedPosterior(4))
    with pytest.raises(ValueError, match="posterior=gaussian") as err:
        BetaTC()(flow_net, Bernoulli(), images, kl_weight=1.0)
    assert str(err.value) == BETA_TC_NEEDS_GAUSSIAN


def test_capacity_ramps_linearly_from_zero_and_survives_as_a_function_of_the_step():
    objective = Capacity(capacity_max=25.0, capacity_steps=100)
    assert [objective.capacity(s) for s in (0, 25, 50, 100, 10_000)] == [0, 6.25, 12.5, 25, 25]
    assert Capacity(capacity_max=5.0, capacity_steps=0).capacity(0) == 5.0


@pytest.mark.parametrize("step", [0, 40, 200])
def test_capacity_loss_is_rec_plus_gamma_times_the_distance_to_c(net, images, step):
    torch.manual_seed(10)
    terms = Capacity(gamma=1000.0, capacity_max=2.0, capacity_steps=80)(
        net, Bernoulli(), images, kl_weight=0.5, step=step
    )
    torch.manual_seed(10)
    elbo = ELBO()(net, Bernoulli(), images, kl_weight=1.0)
    capacity = 2.0 * min(1.0, step / 80)
    assert terms.extras["capacity"].item() == capacity
    torch.testing.assert_close(terms.rec, elbo.rec)
    torch.testing.assert_close(terms.kl, elbo.kl)
    torch.testing.assert_close(terms.elbo, elbo.elbo)
    torch.testing.assert_close(terms.loss, elbo.rec + 0.5 * 1000.0 * (elbo.kl - capacity).abs())


@pytest.mark.parametrize(
    ("objective", "arguments"),
    [
        (BetaTC, {"alpha": -1}),
        (BetaTC, {"beta": -0.5}),
        (BetaTC, {"gamma": -2}),
        (BetaTC, {"dataset_size": 0}),
        (BetaTC, {"estimator": "mss"}),
        (Capacity, {"gamma": -1}),
        (Capacity, {"capacity_max": -25}),
        (Capacity, {"capacity_steps": -1}),
    ],
)
def test_bad_parameters_are_rejected_by_their_signatures(objective, arguments):
    assert [p.parameter for p in argument_problems(objective, arguments)] == list(arguments)


# ------------------------------------------------------------------ real runs
FAST = ["debug=fast", "~callbacks", "trainer.limit_train_batches=2", "test=false", "report=false"]


def test_beta_tc_trains_and_logs_its_terms(tmp_path, idx_root):
    overrides = [*FAST, "objective=beta_tc", f"objective.dataset_size={TRAIN_IMAGES}"]
    run = train_run(tmp_path, idx_root, overrides)
    logged = scalars(run.dir)
    for stage in ("train", "val"):
        values = {name: logged[f"{stage}/{name}"] for name in ("mi", "tc", "dwkl", "kl")}
        assert all(math.isfinite(v) for series in values.values() for v in series)
    assert len(logged["train/mi"]) == 2  # one value per step
    # val/elbo stays the true ELBO: -(rec + closed-form KL), not the weighted loss.
    val = {name: logged[f"val/{name}"][-1] for name in ("elbo", "rec", "kl")}
    assert val["elbo"] == pytest.approx(-(val["rec"] + val["kl"]), rel=1e-5)


def test_capacity_trains_and_logs_c_by_step(tmp_path, idx_root):
    overrides = [
        *FAST,
        "objective=capacity",
        "objective.capacity_max=2.0",
        "objective.capacity_steps=4",
    ]
    run = train_run(tmp_path, idx_root, overrides)
    assert scalar_series(run.dir, "train/capacity") == [(0, 0.0), (1, 0.5)]
    assert "val/capacity" in scalars(run.dir)


def test_beta_tc_with_the_wrong_dataset_size_says_which_to_set(tmp_path, idx_root):
    overrides = [*FAST, "objective=beta_tc", "objective.dataset_size=55000"]
    with pytest.raises(ConfigError, match=f"objective.dataset_size={TRAIN_IMAGES}"):
        train_run(tmp_path, idx_root, overrides)
