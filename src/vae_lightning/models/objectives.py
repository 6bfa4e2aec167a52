"""Training objectives: the ELBO (with KL warm-up, cyclical annealing, free bits) and IWAE.

An objective maps (network, likelihood, images, KL weight) to :class:`ELBOTerms`, batch
means in nats per image: ``loss`` is what is optimised, ``rec`` and ``kl`` are the usual
single-sample terms and ``elbo = -(rec + kl)`` is the true ELBO whatever the objective.
A caller that has already encoded the batch passes ``posterior=(mu, logvar)``: the same
numbers, one encoder pass fewer. The Gaussian maths (KL, sampling, log-densities) is in
models/gaussian.py.

The KL weight at a step is ``model.beta`` times the objective's schedule, a pure function of
the global step (so it survives a resume):

- warm-up (Sønderby et al., 2016): linear from 0 to 1 over ``kl_warmup_steps``, then 1;
- cyclical annealing (Fu et al., 2019): the same ramp restarted every ``cycle_steps`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

from vae_lightning.models import gaussian
from vae_lightning.models.iwae import iwae_bound, log_importance_weights
from vae_lightning.models.likelihoods import Likelihood
from vae_lightning.models.vae import VAE


class ELBOTerms(NamedTuple):
    """Batch means, in nats per image."""

    loss: Tensor  # what is optimised: rec + beta * kl for the ELBO, -IWAE_k for IWAE
    rec: Tensor  # -E_q[log p(x|z)] (one sample)
    kl: Tensor  # KL(q(z|x) || p(z))
    elbo: Tensor  # -(rec + kl), whatever beta is
    # The objective's own lower bound on log p(x), at full KL weight: the ELBO for ELBO, IWAE_k
    # for IWAE. Runs are selected on its best validation value (checkpoint, sweeps, report).
    bound: Tensor


# The encoder's output for a batch, (mu, logvar), each (B, D): given to an objective by a
# caller that needs it too (the test step's IWAE estimate), so each batch is encoded once.
Posterior = tuple[Tensor, Tensor]


def decoder_log_likelihood(net: VAE, likelihood: Likelihood, z: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) for z of shape (n, B, D) against x of shape (B, C, H, W): (n, B)."""
    n, batch = z.shape[:2]
    logits = net.decode(z.flatten(0, 1)).unflatten(0, (n, batch))
    return likelihood.log_prob(logits, x)


class KLSchedule:
    """Multiplier of the KL term in [0, 1] as a function of the global step."""

    def __init__(self, kl_warmup_steps: int = 0, cycle_steps: int = 0) -> None:
        if kl_warmup_steps < 0 or cycle_steps < 0:
            raise ValueError(
                f"kl_warmup_steps={kl_warmup_steps} and cycle_steps={cycle_steps} must be "
                ">= 0 (0 turns them off)."
            )
        if cycle_steps and not 0 < kl_warmup_steps <= cycle_steps:
            raise ValueError(
                f"cycle_steps={cycle_steps} restarts the KL warm-up every {cycle_steps} "
                f"steps, so it needs 0 < kl_warmup_steps <= cycle_steps (got "
                f"{kl_warmup_steps}); Fu et al. (2019) ramp for half of each cycle: "
                f"kl_warmup_steps={cycle_steps // 2}."
            )
        self.kl_warmup_steps, self.cycle_steps = kl_warmup_steps, cycle_steps

    @property
    def active(self) -> bool:
        return self.kl_warmup_steps > 0

    def __call__(self, step: int) -> float:
        if not self.active:
            return 1.0
        if self.cycle_steps:
            step %= self.cycle_steps
        return min(1.0, step / self.kl_warmup_steps)


class ObjectiveInput(NamedTuple):
    """What an objective is evaluated on; ``posterior`` is the batch's (mu, logvar) when the
    caller has encoded it already."""

    net: VAE
    likelihood: Likelihood
    x: Tensor
    kl_weight: float
    posterior: Posterior | None


@dataclass
class Objective:
    """Base of the objectives: ``objective(net, likelihood, x, kl_weight)`` -> ELBOTerms.

    Every objective has the KL weight's schedule; subclasses add their own parameters as
    typed fields (declared once: the config check reads them) and implement :meth:`terms`.
    """

    kl_warmup_steps: NonNegativeInt = 0
    cycle_steps: NonNegativeInt = 0

    def __post_init__(self) -> None:
        self.schedule = KLSchedule(self.kl_warmup_steps, self.cycle_steps)

    def __call__(
        self,
        net: VAE,
        likelihood: Likelihood,
        x: Tensor,
        kl_weight: float,
        posterior: Posterior | None = None,
    ) -> ELBOTerms:
        return self.terms(ObjectiveInput(net, likelihood, x, kl_weight, posterior))

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        raise NotImplementedError


@dataclass
class ELBO(Objective):
    """loss = rec + weight * sum_d max(free_bits, KL_d), KL_d the batch-mean KL of dimension d.

    Free bits (Kingma et al., 2016): each latent dimension's KL, averaged over the batch, is
    not penalised below ``free_bits`` nats, which keeps the encoder from collapsing them.
    With ``free_bits=0`` this is the (beta-)ELBO with the closed-form Gaussian KL.
    """

    free_bits: NonNegativeFloat = 0.0

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        net, likelihood, x, kl_weight, posterior = batch
        if posterior is None:
            out = net(x)  # the network's own forward: what torch.compile wraps
            logits, mu, logvar = out.logits, out.mu, out.logvar
        else:
            mu, logvar = posterior
            logits = net.decode(net.reparameterize(mu, logvar))  # forward() without encode
        rec = -likelihood.log_prob(logits, x).mean()
        kl_dims = gaussian.kl_standard_normal_per_dim(mu, logvar).mean(dim=0)
        kl = kl_dims.sum()
        penalty = kl_dims.clamp(min=self.free_bits).sum() if self.free_bits else kl
        elbo = -(rec + kl)
        return ELBOTerms(loss=rec + kl_weight * penalty, rec=rec, kl=kl, elbo=elbo, bound=elbo)


@dataclass
class IWAE(Objective):
    """loss = -IWAE_k: the k-sample importance-weighted bound (Burda et al., 2016).

    A KL weight below 1 (warm-up) scales log p(z) - log q(z|x) inside each weight, as
    Sønderby et al. (2016) do; with weight 1 the bound is exact. ``rec``/``kl`` come from the
    first sample and the closed-form KL, so ``elbo`` is the same single-sample ELBO as under
    :class:`ELBO`. With k = 1 the loss is the ELBO with a Monte-Carlo KL estimate.
    """

    k: PositiveInt = 5

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        net, likelihood, x, kl_weight, posterior = batch
        mu, logvar = net.encode(x) if posterior is None else posterior
        log_px, log_prior_ratio = log_importance_weights(
            x, mu, logvar, lambda z, x_: decoder_log_likelihood(net, likelihood, z, x_), self.k
        )
        loss = -iwae_bound(log_px + kl_weight * log_prior_ratio).mean()
        bound = -loss if kl_weight == 1.0 else iwae_bound(log_px + log_prior_ratio).mean()
        rec = -log_px[0].mean()
        kl = gaussian.kl_standard_normal(mu, logvar).mean()
        return ELBOTerms(loss=loss, rec=rec, kl=kl, elbo=-(rec + kl), bound=bound)
