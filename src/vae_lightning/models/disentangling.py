"""Disentangling objectives: beta-TCVAE (Chen et al., 2018) and the capacity-annealed beta-VAE
(Burgess et al., 2018). Each is an :class:`Objective`; ``*/elbo`` stays the true ELBO (one
reconstruction draw plus the closed-form KL) and ``*/loss`` is what they optimise.

beta-TCVAE splits the KL term, averaged over the data, into three parts (Chen et al., eq. 2),
with q(z) = 1/N sum_n q(z|x_n) the aggregate posterior over the N training images:

    E_x KL(q(z|x) || p(z)) = I_q(x; z)                          index-code mutual information
                           + KL(q(z) || prod_d q(z_d))          total correlation
                           + sum_d KL(q(z_d) || p(z_d))         dimension-wise KL

and weights them: loss = rec + alpha * MI + beta * TC + gamma * DWKL. The densities of the
aggregate, log q(z) and log q(z_d), are estimated on the minibatch: :func:`log_aggregate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor

from vae_lightning.models import gaussian
from vae_lightning.models.objectives import (
    ELBOTerms,
    Objective,
    ObjectiveInput,
    single_sample_terms,
)

# How log q(z) of the aggregate posterior is estimated from a minibatch (see log_aggregate).
AggregateEstimator = Literal["mws", "stratified"]

BETA_TC_NEEDS_GAUSSIAN = (
    "objective=beta_tc estimates the aggregate posterior q(z) and its marginals q(z_d) from "
    "the per-dimension Gaussian densities log q(z_d|x_j), and splits the KL against a prior "
    "that factorises over the dimensions; this needs the encoder's diagonal Gaussian as the "
    "posterior, a factorised Gaussian prior and one stochastic layer (posterior=gaussian, "
    "prior=standard, not a flow, a mixture/VampPrior or a hierarchy). Use objective=elbo "
    "with this prior, posterior or model."
)


class KLDecomposition(NamedTuple):
    """Batch means in nats per image; mi + tc + dwkl = mean(log q(z|x) - log p(z)) exactly."""

    mi: Tensor  # E[log q(z|x) - log q(z)]
    tc: Tensor  # E[log q(z) - sum_d log q(z_d)]
    dwkl: Tensor  # E[sum_d log q(z_d) - log p(z)]


def pairwise_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z_{i,d} | x_j) of every code i under every image j's Gaussian, per dimension:
    (B, D) codes and (B, D) posteriors -> (B_i, B_j, D)."""
    # A trailing dimension of size 1 makes gaussian.log_normal's sum a no-op: per dimension.
    return gaussian.log_normal(z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None])


def log_aggregate(
    log_q_pairs: Tensor, dataset_size: int, estimator: AggregateEstimator = "mws"
) -> Tensor:
    """Minibatch estimate of log q(z_i) = log 1/N sum_n q(z_i|x_n) for code i, drawn from
    image i of the batch, from ``log_q_pairs[i, j] = log q(z_i|x_j)``, (B, B, ...): (B, ...).

    ``mws``, minibatch-weighted sampling (Chen et al., 2018, sec. 4.1, the estimator they
    train with): log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log(N M), M the batch size. Its
    weights sum to 1/N, not 1: it reads low by about log N when the posteriors overlap
    (every q(z_i|x_j) close to q(z_i)) and by up to log(N M) when they do not; its values
    depend on N and M, its gradients do not.

    ``stratified``: the code's own image is one stratum of the data, weight 1/N, and the
    other M - 1 images of the batch stand for the other N - 1, weight (N - 1) / (N (M - 1))
    each. The weights sum to 1, so with the whole data set as the batch (M = N) it is the
    exact log q(z_i).
    """
    batch = log_q_pairs.shape[0]
    if estimator == "mws":
        return torch.logsumexp(log_q_pairs, dim=1) - math.log(dataset_size * batch)
    other_weight = math.log(dataset_size - 1) - math.log(dataset_size * max(batch - 1, 1))
    log_weights = torch.full(
        (batch, batch), other_weight, dtype=log_q_pairs.dtype, device=log_q_pairs.device
    )
    log_weights.fill_diagonal_(-math.log(dataset_size))
    log_weights = log_weights.reshape(batch, batch, *([1] * (log_q_pairs.dim() - 2)))
    return torch.logsumexp(log_q_pairs + log_weights, dim=1)


def kl_decomposition(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    log_q_zx: Tensor,
    log_p_z: Tensor,
    dataset_size: int,
    estimator: AggregateEstimator = "mws",
) -> KLDecomposition:
    """MI, TC and dimension-wise KL of codes z (B, D), drawn one per image from
    N(mu, diag exp(logvar)), with their log q(z|x) and log p(z) (B,).

    The same estimates of log q(z) and sum_d log q(z_d) enter two terms each, so the three
    sum to mean(log q(z|x) - log p(z)), the single-draw Monte-Carlo KL, whatever the
    estimator; the estimator decides only how the KL is shared out.
    """
    pairs = pairwise_log_density(z, mu, logvar)  # (B, B, D)
    log_qz = log_aggregate(pairs.sum(-1), dataset_size, estimator)
    log_prod_marginals = log_aggregate(pairs, dataset_size, estimator).sum(-1)
    return KLDecomposition(
        mi=(log_q_zx - log_qz).mean(),
        tc=(log_qz - log_prod_marginals).mean(),
        dwkl=(log_prod_marginals - log_p_z).mean(),
    )


@dataclass
class BetaTC(Objective):
    """beta-TCVAE (Chen et al., 2018): loss = rec + w * (alpha MI + beta TC + gamma DWKL).

    w is the KL weight (``model.beta`` times the warm-up/cyclical schedule), as for every
    objective: it scales all three terms, so keep ``model.beta=1`` and weigh the terms here.
    The defaults are the paper's: alpha = gamma = 1 and only beta raised (6 in the authors'
    dSprites example). With alpha = beta = gamma = 1 the loss is rec plus the single-draw
    Monte-Carlo KL, the ELBO's loss up to the KL estimator.

    ``dataset_size`` is N, the size of the training split (the official train split less
    ``data.val_size``); ``estimator`` picks the minibatch estimate of the aggregate posterior
    (:func:`log_aggregate`). Logged as ``*/mi``, ``*/tc``, ``*/dwkl``.
    """

    extra_terms: ClassVar[tuple[str, ...]] = KLDecomposition._fields

    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 6.0
    gamma: NonNegativeFloat = 1.0
    dataset_size: PositiveInt = 55000
    estimator: AggregateEstimator = "mws"

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        net = batch.net
        # A closed-form KL means q(z|x) is the encoder's diagonal Gaussian and p(z) a
        # factorised Gaussian: what the per-dimension split needs.
        if not net.closed_form_kl:
            raise ValueError(BETA_TC_NEEDS_GAUSSIAN)
        mu, logvar = batch.encoded()
        kl_per_dim = net.kl_per_dim(mu, logvar)
        draws = net.draw_latents(mu, logvar, 1)
        rec = -batch.log_likelihood(draws.z)[0].mean()
        kl = kl_per_dim.sum(-1).mean()
        parts = kl_decomposition(
            draws.z[0],
            mu,
            logvar,
            draws.log_q[0],
            draws.log_p[0],
            self.dataset_size,
            self.estimator,
        )
        penalty = self.alpha * parts.mi + self.beta * parts.tc + self.gamma * parts.dwkl
        elbo = -(rec + kl)
        return ELBOTerms(
            loss=rec + batch.kl_weight * penalty,
            rec=rec,
            kl=kl,
            elbo=elbo,
            bound=elbo,
            extras=parts._asdict(),
        )

    def data_problem(self, train_size: int) -> str | None:
        if train_size == self.dataset_size:
            return None
        return (
            f"objective.dataset_size={self.dataset_size}, but the training split holds "
            f"{train_size} images: beta-TCVAE's estimate of the aggregate posterior q(z) "
            f"needs the training split's size N. Set objective.dataset_size={train_size}."
        )


@dataclass
class Capacity(Objective):
    """The capacity-annealed beta-VAE (Burgess et al., 2018): loss = rec + w * gamma |KL - C|.

    The KL (batch mean, nats per image) is pulled towards a target capacity C that rises
    linearly from 0 to ``capacity_max`` nats over ``capacity_steps`` optimizer steps, then
    stays there; ``capacity_steps=0`` holds C at ``capacity_max`` from the start. C is a pure
    function of the global step, so it survives a resume. w is the KL weight (``model.beta``
    times the schedule), 1 by default. The defaults are the paper's dSprites setting
    (gamma = 1000, C from 0 to 25 nats over 100,000 steps). Logged as ``*/capacity``.
    """

    extra_terms: ClassVar[tuple[str, ...]] = ("capacity",)

    gamma: NonNegativeFloat = 1000.0
    capacity_max: NonNegativeFloat = 25.0
    capacity_steps: NonNegativeInt = 100000

    def capacity(self, step: int) -> float:
        """C(step) in nats."""
        if not self.capacity_steps:
            return float(self.capacity_max)
        return self.capacity_max * min(1.0, step / self.capacity_steps)

    def terms(self, batch: ObjectiveInput) -> ELBOTerms:
        rec, kl, _ = single_sample_terms(batch)
        capacity = self.capacity(batch.step)
        elbo = -(rec + kl)
        return ELBOTerms(
            loss=rec + batch.kl_weight * self.gamma * (kl - capacity).abs(),
            rec=rec,
            kl=kl,
            elbo=elbo,
            bound=elbo,
            # torch.full hands the float to a fill kernel: no host-device copy or sync.
            extras={"capacity": torch.full((), capacity, device=kl.device)},
        )
