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

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, NamedTuple

from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

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
    # The objective's own named terms, logged as train/<name>, val/<name>, test/<name>
    # (beta-TCVAE's mi, tc, dwkl; the capacity's C): the keys of its ``extra_terms``.
    extras: Mapping[str, Tensor] = MappingProxyType({})

    def by_name(self) -> dict[str, Tensor]:
        """Every term by name, the objective's own (``extras``) after the ELBO terms."""
        named = {name: getattr(self, name) for name in self._fields if name != "extras"}
        return {**named, **self.extras}


# The encoder's output for a batch, (mu, logvar), each (B, D): given to an objective by a
# caller that needs it too (the test step's IWAE estimate), so each batch is encoded once.
Posterior = tuple[Tensor, Tensor]


def decoder_log_likelihood(
    net: VAE, likelihood: Likelihood, z: Tensor, x: Tensor, labels: Tensor | None = None
) -> Tensor:
    """log p(x|z) for z of shape (n, B, D) against x of shape (B, C, H, W): (n, B)."""
    n, batch = z.shape[:2]
    flat_labels = None if labels is None else labels.repeat(n)
    logits = net.decode(z.flatten(0, 1), flat_labels).unflatten(0, (n, batch))
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
    caller has encoded it already, ``labels`` the batch's class labels (for conditional
    models; None otherwise), ``step`` the optimizer step of the weights (for objectives with
    a schedule of their own, such as the capacity's C(step))."""

    net: VAE
    likelihood: Likelihood
    x: Tensor
    kl_weight: float
    posterior: Posterior | None
    labels: Tensor | None = None
    step: int = 0

    def encoded(self) -> Posterior:
        """The batch's (mu, logvar): the caller's, or one encoder pass."""
        if self.posterior is not None:
            return self.posterior
        return self.net.encode(self.x, self.labels)

    def log_likelihood(self, z: Tensor) -> Tensor:
        """log p(x|z) of (n, B, D) codes: (n, B)."""
        return decoder_log_likelihood(self.net, self.likelihood, z, self.x, self.labels)

    def importance_weights(self, k: int) -> tuple[Tensor, Tensor]:
        """log p(x|z_i) and log p(z_i) - log q(z_i|x) of k draws from the net's posterior."""
        mu, logvar = self.encoded()
        return log_importance_weights(
            self.x,
            mu,
            logvar,
            lambda z, _: self.log_likelihood(z),
            k,
            draw_latents=self.net.draw_latents,
        )


@dataclass
class Objective:
    """Base of the objectives: ``objective(net, likelihood, x, kl_weight)`` -> ELBOTerms.

    Every objective has the KL weight's schedule; subclasses add their own parameters as
    typed fields (declared once: the config check reads them) and implement :meth:`terms`.
    One that reports more than the ELBO terms names them in ``extra_terms`` and returns them
    in ``ELBOTerms.extras``; the lit module logs them like the others.
    """

    extra_terms: ClassVar[tuple[str, ...]] = ()

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
        labels: Tensor | None = None,
        step: int = 0,
    ) -> ELBOTerms:
        return self.terms(ObjectiveInput(net, likelihood, x, kl_weight, posterior, labels, step))

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        raise NotImplementedError

    def data_problem(self, train_size: int) -> str | None:
        """What is wrong with this objective for a training split of ``train_size`` images
        (checked when fitting starts); None when nothing is."""
        return None


def single_sample_terms(batch: ObjectiveInput) -> tuple[Tensor, Tensor, Tensor | None]:
    """One draw per image: -E_q[log p(x|z)] and the KL (batch means), and the KL per latent
    dimension, (D,), when it has a closed form.

    The KL is in closed form where there is one (a Gaussian posterior and a Gaussian prior);
    otherwise it is the Monte-Carlo estimate log q(z|x) - log p(z) at the same z that the
    reconstruction term decodes.
    """
    net, likelihood, x, posterior, labels = (
        batch.net,
        batch.likelihood,
        batch.x,
        batch.posterior,
        batch.labels,
    )
    if not net.closed_form_kl:  # one draw, through the flow or the layers
        draws = net.draw_latents(*batch.encoded(), 1)
        rec = -batch.log_likelihood(draws.z)[0].mean()
        return rec, (draws.log_q - draws.log_p)[0].mean(), None
    if posterior is None:
        out = net(x, labels)  # the network's own forward: what torch.compile wraps
        logits, mu, logvar = out.logits, out.mu, out.logvar
    else:
        mu, logvar = posterior
        logits = net.decode(net.reparameterize(mu, logvar), labels)  # forward() without encode
    kl_per_dim = net.kl_per_dim(mu, logvar)
    rec = -likelihood.log_prob(logits, x).mean()
    kl_dims = kl_per_dim.mean(dim=0)
    return rec, kl_dims.sum(), kl_dims


@dataclass
class ELBO(Objective):
    """loss = rec + weight * sum_d max(free_bits, KL_d), KL_d the batch-mean KL of dimension d.

    Free bits (Kingma et al., 2016): each latent dimension's KL, averaged over the batch, is
    not penalised below ``free_bits`` nats, which keeps the encoder from collapsing them (it
    needs the per-dimension closed form: a Gaussian posterior and prior).
    With ``free_bits=0`` this is the (beta-)ELBO.
    """

    free_bits: NonNegativeFloat = 0.0

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        rec, kl, kl_dims = single_sample_terms(batch)
        penalty = kl
        if self.free_bits:
            if kl_dims is None:
                raise ValueError(FREE_BITS_NEED_CLOSED_FORM)
            penalty = kl_dims.clamp(min=self.free_bits).sum()
        elbo = -(rec + kl)
        return ELBOTerms(
            loss=rec + batch.kl_weight * penalty, rec=rec, kl=kl, elbo=elbo, bound=elbo
        )


FREE_BITS_NEED_CLOSED_FORM = (
    "objective.free_bits needs the KL of each latent dimension in closed form, which only a "
    "Gaussian posterior with a Gaussian prior has; use objective.free_bits=0 with this prior, "
    "posterior or model."
)


@dataclass
class IWAE(Objective):
    """loss = -IWAE_k: the k-sample importance-weighted bound (Burda et al., 2016).

    A KL weight below 1 (warm-up) scales log p(z) - log q(z|x) inside each weight, as
    Sønderby et al. (2016) do; with weight 1 the bound is exact. ``rec``/``kl`` come from the
    first sample and the KL (closed form where there is one, else that sample's estimate), so
    ``elbo`` is a single-sample ELBO as under :class:`ELBO`. With k = 1 the loss is the ELBO
    with a Monte-Carlo KL estimate. The weights are not detached: the gradient of logsumexp
    is the self-normalised importance-weighted gradient of Burda et al.
    """

    k: PositiveInt = 5

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        mu, logvar = batch.encoded()
        batch = batch._replace(posterior=(mu, logvar))
        log_px, log_prior_ratio = batch.importance_weights(self.k)
        loss = -iwae_bound(log_px + batch.kl_weight * log_prior_ratio).mean()
        bound = -loss if batch.kl_weight == 1.0 else iwae_bound(log_px + log_prior_ratio).mean()
        rec = -log_px[0].mean()
        kl_per_dim = batch.net.kl_per_dim(mu, logvar)
        kl = -log_prior_ratio[0].mean() if kl_per_dim is None else kl_per_dim.sum(-1).mean()
        return ELBOTerms(loss=loss, rec=rec, kl=kl, elbo=-(rec + kl), bound=bound)
