"""model=hvae (two stochastic layers, Burda et al. 2016): its bounds against the closed-form
log p(x) of a linear-Gaussian hierarchy, the objectives' gradients against an independent
float64 reference, and real runs (test/nll_iwae, vae-eval, visuals, HParams tab)."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from helpers.events import hparams_session_groups, image_tags, scalars, written_images
from helpers.runs import TrainedRun, train_run
from vae_lightning.errors import ConfigError
from vae_lightning.models.hierarchical import HierarchicalVAE, hvae
from vae_lightning.models.iwae import iwae_log_likelihood
from vae_lightning.models.likelihoods import Bernoulli as BernoulliLikelihood
from vae_lightning.models.likelihoods import Likelihood
from vae_lightning.models.objectives import ELBO, IWAE
from vae_lightning.models.posteriors import Posterior
from vae_lightning.models.priors import Prior
from vae_lightning.models.vae import mlp_vae

DTYPE = torch.float64


# ------------------------------------------------- a linear-Gaussian two-layer hierarchy
class LinearGaussian(nn.Module):
    """h -> (W h + c, a constant log-variance): a Gaussian layer linear in its input."""

    def __init__(self, weight: Tensor, bias: Tensor, variance: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.register_buffer("logvar", variance.log())

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu = h.flatten(1) @ self.weight.T + self.bias
        return mu, self.logvar.expand_as(mu)


class LinearMean(nn.Module):
    """z1 -> B z1 + b, shaped as a (1, 1, D) image: the mean of p(x|z1)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, z1: Tensor) -> Tensor:
        return (z1 @ self.weight.T + self.bias)[:, None, None, :]


class IdentityGaussian(Likelihood):
    """x ~ N(decoder output, diag std^2) per pixel, in the input's dtype (test-only)."""

    expects_binary = False

    def __init__(self, variance: Tensor) -> None:
        super().__init__()
        self.register_buffer("std", variance.sqrt())

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        return Normal(logits, self.std).log_prob(x.expand_as(logits)).sum(dim=(-3, -2, -1))

    def mean(self, logits: Tensor) -> Tensor:
        return logits


class LinearHierarchy:
    """p(z2) = N(0, I), p(z1|z2) = N(A z2 + a, S1), p(x|z1) = N(B z1 + b, S2), and an hvae
    whose q(z1|x) and q(z2|z1) have the exact posterior's means and the diagonals of its
    covariances (exact when those are diagonal), times ``variance_scale``."""

    def __init__(self, A, a, s1, B, b, s2, variance_scale: float = 1.0) -> None:
        self.A, self.a, self.s1, self.B, self.b, self.s2 = A, a, s1, B, b, s2
        prior_z1 = A @ A.T + torch.diag(s1)  # Cov z1
        cov_x = B @ prior_z1 @ B.T + torch.diag(s2)
        gain = prior_z1 @ B.T @ torch.linalg.inv(cov_x)  # E[z1|x] = a + gain (x - B a - b)
        post_z1 = prior_z1 - gain @ B @ prior_z1
        top_gain = A.T @ torch.linalg.inv(prior_z1)  # E[z2|z1] = top_gain (z1 - a)
        post_z2 = torch.eye(A.shape[1], dtype=DTYPE) - top_gain @ A
        self.marginal = MultivariateNormal(B @ a + b, cov_x)
        self.exact = bool(
            (post_z1 - torch.diag(post_z1.diagonal())).abs().max() < 1e-12
            and (post_z2 - torch.diag(post_z2.diagonal())).abs().max() < 1e-12
        )
        self.net = HierarchicalVAE(
            encoder=LinearGaussian(
                gain, a - gain @ (B @ a + b), post_z1.diagonal() * variance_scale
            ),
            encoder_top=LinearGaussian(
                top_gain, -top_gain @ a, post_z2.diagonal() * variance_scale
            ),
            decoder_top=LinearGaussian(A, a, s1),
            decoder=LinearMean(B, b),
            z1_dim=A.shape[0],
            latent_dim=A.shape[1],
        )
        self.likelihood = IdentityGaussian(s2[None, None, :])

    def log_px(self, x: Tensor) -> Tensor:
        """The closed form: log N(x; B a + b, B (A A^T + S1) B^T + S2)."""
        return self.marginal.log_prob(x.flatten(1))

    def iwae(self, x: Tensor, k: int, seed: int) -> Tensor:
        """IWAE_k per image through the estimator of test/nll_iwae and vae-eval."""
        mu, logvar = self.net.encode(x)
        return iwae_log_likelihood(
            x,
            mu,
            logvar,
            lambda z, images: self.likelihood.log_prob(
                self.net.decode(z.flatten(0, 1)).unflatten(0, z.shape[:2]), images
            ),
            k,
            generator=torch.Generator().manual_seed(seed),
            draw_latents=self.net.draw_latents,
        )


def elementwise_hierarchy() -> LinearHierarchy:
    """Diagonal A and B: every posterior is diagonal, so q is the exact posterior."""
    return LinearHierarchy(
        A=torch.diag(torch.tensor([1.5, -0.7, 0.4], dtype=DTYPE)),
        a=torch.tensor([0.3, -0.2, 0.1], dtype=DTYPE),
        s1=torch.tensor([0.5, 0.8, 0.3], dtype=DTYPE),
        B=torch.diag(torch.tensor([2.0, 1.0, -1.2], dtype=DTYPE)),
        b=torch.tensor([0.1, 0.0, -0.3], dtype=DTYPE),
        s2=torch.tensor([0.2, 0.4, 0.3], dtype=DTYPE),
    )


def mixing_hierarchy() -> LinearHierarchy:
    """Full A (3x2) and B (4x3): the exact posteriors are correlated, q's diagonal is not
    (an ELBO gap of about half a nat)."""
    gen = torch.Generator().manual_seed(0)
    return LinearHierarchy(
        A=torch.randn(3, 2, generator=gen, dtype=DTYPE) * 0.5,
        a=torch.randn(3, generator=gen, dtype=DTYPE) * 0.3,
        s1=torch.full((3,), 0.5, dtype=DTYPE),
        B=torch.randn(4, 3, generator=gen, dtype=DTYPE) * 0.5,
        b=torch.randn(4, generator=gen, dtype=DTYPE) * 0.3,
        s2=torch.ones(4, dtype=DTYPE),
    )


def test_with_the_exact_posterior_every_weight_and_the_elbo_equal_log_px():
    model = elementwise_hierarchy()
    assert model.exact
    x = torch.tensor([[[[0.5, -1.0, 2.0]]], [[[-0.3, 0.8, 0.0]]]], dtype=DTYPE)
    log_px = model.log_px(x)
    # Every importance weight is p(x, z1, z2) / q(z1, z2|x) = p(x): IWAE_1 = IWAE_k = log p(x).
    for k in (1, 7):
        torch.testing.assert_close(model.iwae(x, k, seed=1), log_px, rtol=0, atol=1e-10)
    terms = ELBO()(model.net, model.likelihood, x, 1.0)
    torch.testing.assert_close(terms.elbo, log_px.mean(), rtol=0, atol=1e-10)


def test_elbo_below_iwae_below_log_px_and_iwae_converges_as_k_grows():
    model = mixing_hierarchy()
    assert not model.exact
    x = torch.tensor([[[[0.7, -0.4, 1.1, 0.2]]]], dtype=DTYPE)
    log_px = model.log_px(x).item()
    copies = x.expand(4000, -1, -1, -1)  # one estimate per copy: means and standard errors
    means, errors = {}, {}
    for k in (1, 5, 50):
        estimates = model.iwae(copies, k, seed=k)
        means[k], errors[k] = (
            estimates.mean().item(),
            estimates.std().item() / math.sqrt(len(copies)),
        )
    # In expectation ELBO = IWAE_1 <= IWAE_5 <= IWAE_50 <= log p(x), each gap many errors wide.
    assert means[1] + 5 * errors[1] < means[5] < means[50] < log_px + 3 * errors[50]
    assert means[5] + 3 * errors[5] < means[50]
    assert log_px - means[1] > 0.3  # q is not the posterior: the ELBO has a real gap
    # The shared ELBO objective agrees with IWAE_1 through the same draw_latents.
    torch.manual_seed(0)
    elbo = ELBO()(model.net, model.likelihood, copies, 1.0).elbo.item()
    assert elbo == pytest.approx(means[1], abs=5 * errors[1])
    # IWAE_5000 of one image is within a few hundredths of a nat of log p(x).
    assert model.iwae(x, 5000, seed=3).item() == pytest.approx(log_px, abs=0.02)


# --------------------------------------- objective gradients against a float64 reference
class Reference(NamedTuple):
    log_weights: Tensor  # (k, B): log p(x, z) - log q(z|x)
    log_px: Tensor  # (k, B): log p(x|z)
    kl: Tensor | None  # (B,): KL(q(z|x) || p(z)) in closed form, where the objective uses it


def reference_log_weights_vae(net, x: Tensor, mu: Tensor, logvar: Tensor, k: int) -> Reference:
    """log p(x|z) + log p(z) - log q(z|x) of k draws, written with torch.distributions."""
    eps = torch.randn(k, *mu.shape, dtype=DTYPE)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps
    logits = net.decoder(z.flatten(0, 1)).unflatten(0, (k, len(x)))
    log_px = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(dim=(-3, -2, -1))
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    kl = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1)
    return Reference(log_px + log_pz - Normal(mu, std).log_prob(z).sum(-1), log_px, kl)


def reference_log_weights_hvae(net, x: Tensor, mu: Tensor, logvar: Tensor, k: int) -> Reference:
    """log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1) of k draws."""
    eps1 = torch.randn(k, *mu.shape, dtype=DTYPE)
    eps2 = torch.randn(1, k, len(x), net.latent_dim, dtype=DTYPE)[0]
    std1 = torch.exp(0.5 * logvar)
    z1 = mu + std1 * eps1
    mu2, logvar2 = (t.unflatten(0, (k, len(x))) for t in net.encoder_top(z1.flatten(0, 1)))
    std2 = torch.exp(0.5 * logvar2)
    z2 = mu2 + std2 * eps2
    mu_p, logvar_p = (t.unflatten(0, (k, len(x))) for t in net.decoder_top(z2.flatten(0, 1)))
    logits = net.decoder(z1.flatten(0, 1)).unflatten(0, (k, len(x)))
    log_px = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(dim=(-3, -2, -1))
    log_p = Normal(0.0, 1.0).log_prob(z2).sum(-1) + Normal(
        mu_p, torch.exp(0.5 * logvar_p)
    ).log_prob(z1).sum(-1)
    log_q = Normal(mu, std1).log_prob(z1).sum(-1) + Normal(mu2, std2).log_prob(z2).sum(-1)
    return Reference(log_px + log_p - log_q, log_px, None)  # a hierarchy: Monte-Carlo KL


TINY = (1, 6, 6)
MODELS = {
    "mlp": (lambda: mlp_vae(TINY, latent_dim=3, hidden_dims=(8,)), reference_log_weights_vae),
    "hvae": (
        lambda: hvae(TINY, latent_dim=2, z1_dim=3, hidden_dims_x_z1=(8,), hidden_dims_z1_z2=(5,)),
        reference_log_weights_hvae,
    ),
}


@pytest.mark.parametrize("objective", [ELBO(), IWAE(k=5)], ids=["elbo", "iwae"])
@pytest.mark.parametrize("name", list(MODELS))
def test_objective_gradients_match_an_independent_float64_reference(name, objective):
    build, reference = MODELS[name]
    torch.manual_seed(0)
    net = build().to(DTYPE)
    x = (torch.rand(4, *TINY) > 0.5).to(DTYPE)
    k = getattr(objective, "k", 1)

    def gradients(loss_fn) -> list[Tensor]:
        net.zero_grad()
        mu, logvar = net.encode(x)
        torch.manual_seed(7)  # the same noise for the objective and the reference
        loss_fn(mu, logvar).backward()
        return [p.grad.clone() for p in net.parameters()]

    def objective_loss(mu, logvar):
        return objective(net, BernoulliLikelihood(), x, 1.0, posterior=(mu, logvar)).loss

    def reference_loss(mu, logvar):
        ref = reference(net, x, mu, logvar, k)
        if isinstance(objective, ELBO) and ref.kl is not None:
            return -ref.log_px[0].mean() + ref.kl.mean()  # the ELBO with the closed-form KL
        return -(torch.logsumexp(ref.log_weights, dim=0) - math.log(k)).mean()

    got, expected = gradients(objective_loss), gradients(reference_loss)
    assert all(g.abs().sum() > 0 for g in expected)  # every parameter gets a gradient
    for g, e in zip(got, expected, strict=True):
        # Bernoulli.log_prob sums in float32: agreement to ~1e-6 relative, not 1e-12.
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- the factory
def test_hvae_is_burdas_network_by_default():
    net = hvae((1, 28, 28))
    widths = lambda module: [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]  # noqa: E731
    assert widths(net.encoder) == [200, 200, 100, 100]  # body, then the head's mu and logvar
    assert widths(net.encoder_top) == [100, 100, 50, 50]
    assert widths(net.decoder_top) == [100, 100, 100, 100]
    assert widths(net.decoder) == [200, 200, 784]
    assert any(isinstance(m, nn.Tanh) for m in net.modules())
    assert net.latent_dim == 50 and net.z1_dim == 100
    x = torch.zeros(3, 1, 28, 28)
    assert net.encode_code(x)[0].shape == (3, 50)  # the pictures walk in z2
    assert net.decode_code(net.sample_prior(2)).shape == (2, 1, 28, 28)
    assert net.kl_per_dim(torch.zeros(1, 100), torch.zeros(1, 100)) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior": Prior(50)}, "prior=standard"),
        ({"posterior": Posterior(50)}, "posterior=gaussian"),
    ],
)
def test_hvae_refuses_another_prior_or_posterior(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hvae((1, 28, 28), **kwargs)


@pytest.mark.parametrize(
    "override",
    [
        "prior._target_=vae_lightning.models.priors.Prior",
        "posterior._target_=vae_lightning.models.posteriors.Posterior",
    ],
)
def test_a_foreign_prior_or_posterior_is_a_config_error(tmp_path, idx_root, override):
    with pytest.raises(ConfigError, match="model=hvae has its own"):
        train_run(tmp_path, idx_root, ["model=hvae", "debug=fast", override])


# ---------------------------------------------------------------------- a real short run
@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory, idx_root) -> TrainedRun:
    """One short epoch of model=hvae trained on IWAE_5, with every visual callback."""
    return train_run(
        tmp_path_factory.mktemp("hvae_run"),
        idx_root,
        [
            "model=hvae",
            "objective=iwae",
            "debug=fast",
            "~callbacks.progress_bar",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "test_iwae_k=20",
            "callbacks.traversals.num_dims=3",
            "callbacks.traversals.num_steps=5",
            "callbacks.traversals.num_images=50",
            "callbacks.interpolations.num_pairs=2",
            "callbacks.latent_space.num_images=32",
            "callbacks.latent_space.every_n_epochs=1",
            "callbacks.posterior_collapse.num_images=50",
        ],
    )


TILE = 28 + 2  # a 28-px image and make_grid's 2-px padding


def test_hvae_run_logs_test_nll_and_bounds_in_order(hvae_run):
    metrics = hvae_run.metrics
    for name in ("test/nll_iwae", "test/elbo", "test/bound", "val/bound", "test/active_units"):
        assert math.isfinite(metrics[name]), name
    # IWAE_20 is (up to noise) above IWAE_5, which is above the one-sample ELBO.
    assert -metrics["test/nll_iwae"] > metrics["test/bound"] - 1.0
    assert metrics["test/bound"] > metrics["test/elbo"] - 1.0
    assert metrics["test/kl"] > 0


def test_hvae_traversals_walk_the_top_layer_and_the_hparams_tab_is_written(hvae_run):
    log_dir = hvae_run.dir / "tensorboard"
    assert {"val/samples", "val/reconstructions", "val/traversals", "val/interpolations"} <= (
        image_tags(hvae_run.dir)
    )
    (traversal,) = {(i.height, i.width) for i in written_images(log_dir, "val/traversals")}
    assert traversal == (2 + 3 * TILE, 2 + 5 * TILE)  # 3 of z2's dimensions x 5 values
    assert len(scalars(hvae_run.dir)["val/active_units"]) == 1
    (group,) = hparams_session_groups(log_dir)
    assert group.hparams["model"].string_value == "hvae"
    assert group.hparams["model.net.z1_dim"].number_value == 100
    assert group.hparams["model.latent_dim"].number_value == 50


def test_vae_eval_reproduces_the_hvae_runs_test_nll(hvae_run, tmp_path):
    from hydra import initialize_config_dir

    from helpers.paths import CONF_DIR
    from vae_lightning.configs import compose_as_launched
    from vae_lightning.evaluate import evaluate

    ckpt = next((hvae_run.dir / "checkpoints").glob("epoch_*.ckpt"))
    base = [f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", "eval.progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [*base, f"ckpt_path={ckpt}", "eval.iwae_k=20", "eval.batch_size=1000"]
        result = evaluate(compose_as_launched("eval", overrides))
    assert result["kl_estimator"] == "monte_carlo"
    # The checkpoint the end-of-training test used, the same k and seeds: the same numbers.
    for name in ("nll_iwae", "elbo", "kl", "bound"):
        assert result[f"test/{name}"] == pytest.approx(hvae_run.metrics[f"test/{name}"], abs=1e-3)
