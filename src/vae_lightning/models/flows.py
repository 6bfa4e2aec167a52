"""Normalizing-flow posteriors: the encoder's Gaussian pushed through invertible maps.

q(z|x) is the density of z = f_T(...f_1(z0)) with z0 ~ N(mu(x), diag exp(logvar(x))):
log q(z|x) = log N(z0) - sum_t log |det df_t/dz_{t-1}| (models/posteriors.py adds the steps'
log-determinants that :meth:`transform` returns). The flows are amortised: their parameters
depend on x through the context, the encoder's (mu, logvar) concatenated (2 * latent_dim).

- planar (Rezende & Mohamed, 2015): f(z) = z + u h(w^T z + b), h = tanh;
- IAF (Kingma et al., 2016): z = sigma * z + (1 - sigma) * m, with (m, s) from a MADE
  (Germain et al., 2015) of z and the context, sigma = sigmoid(s).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor, nn

from vae_lightning.models.posteriors import Posterior

# softplus(SOFTPLUS_ONE) = 1: the planar constraint's m(a) = softplus(a + c) - 1 is then 0 at
# a = 0, so u = 0 gives u_hat = 0 (the identity) exactly; it is computed as
# softplus(a + c) - softplus(c), which is 0 at a = 0 in floating point too.
SOFTPLUS_ONE = float(torch.log(torch.expm1(torch.tensor(1.0, dtype=torch.float64))))


def at_least_float32_zeros(z: Tensor) -> Tensor:
    """A zero log-determinant per code, (...,), accumulated in at least float32."""
    return torch.zeros(
        z.shape[:-1], device=z.device, dtype=torch.promote_types(z.dtype, torch.float32)
    )


class PlanarFlow(Posterior):
    """``num_flows`` planar steps f(z) = z + u_hat tanh(w^T z + b) (Rezende & Mohamed, 2015).

    log |det df/dz| = log |1 + u_hat^T psi(z)|, psi(z) = tanh'(w^T z + b) w. Amortised, as in
    the paper: (u, w, b) of every step come from one linear map of the context. The map is
    invertible when w^T u_hat >= -1; u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
    m(a) = softplus(a + c) - 1 > -1 (c = log(e - 1), so m(0) = 0) guarantees it, and
    1 + u_hat^T psi = 1 + tanh' * w^T u_hat > 0, so the log needs no absolute value.

    The u part of the map starts at zero: the flow starts as the identity (q is the encoder's
    Gaussian), and learns away from it. Cost: one (2D -> T(2D+1)) linear map per batch and
    O(D) per step and sample.
    """

    is_gaussian = False

    def __init__(self, latent_dim: PositiveInt, num_flows: PositiveInt = 8) -> None:
        super().__init__(latent_dim)
        self.num_flows = num_flows
        self.parameters_of_context = nn.Linear(2 * latent_dim, num_flows * (2 * latent_dim + 1))
        d = latent_dim
        with torch.no_grad():
            weight = self.parameters_of_context.weight.view(num_flows, 2 * d + 1, 2 * d)
            bias = self.parameters_of_context.bias.view(num_flows, 2 * d + 1)
            weight[:, :d].zero_()  # u = 0: the identity
            bias[:, :d].zero_()
            bias[:, d : 2 * d].normal_(0.0, 1.0)  # w away from 0 whatever the context
            bias[:, 2 * d :].zero_()

    def _split(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., T * (2D + 1)) -> u (..., T, D), w (..., T, D), b (..., T, 1): views."""
        steps = flat.unflatten(-1, (self.num_flows, 2 * self.latent_dim + 1))
        d = self.latent_dim
        return steps[..., :d], steps[..., d : 2 * d], steps[..., 2 * d :]

    def transform(self, z0: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        weight_dtype = self.parameters_of_context.weight.dtype
        u, w, b = self._split(self.parameters_of_context(context.to(weight_dtype)))
        u, w, b = u.to(z0.dtype), w.to(z0.dtype), b.to(z0.dtype)
        wu = (w * u).sum(dim=-1, keepdim=True)
        m = F.softplus(wu + SOFTPLUS_ONE) - F.softplus(torch.full_like(wu, SOFTPLUS_ONE))
        u_hat = u + (m - wu) * w / w.pow(2).sum(dim=-1, keepdim=True).clamp_min(1e-12)
        z, log_det = z0, at_least_float32_zeros(z0)
        for t in range(self.num_flows):  # the steps compose: one after the other
            a = (w[..., t, :] * z).sum(dim=-1, keepdim=True) + b[..., t, :]
            h = torch.tanh(a)
            z = z + u_hat[..., t, :] * h
            # 1 + u_hat^T psi with psi = (1 - tanh^2) w; > 0 by the constraint on u_hat.
            wu_hat = (w[..., t, :] * u_hat[..., t, :]).sum(dim=-1)
            log_det = log_det + torch.log1p((1 - h.squeeze(-1).pow(2)) * wu_hat)
        return z, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE's connectivity)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive network (Germain et al., 2015): outputs (m, s) where m_d, s_d depend
    only on the inputs before d in ``order`` (and on the context, freely).

    Input d has degree order[d] in 1..D; hidden unit k has degree k mod D in 0..D-1 (degree
    0 units see only the context, so the first dimension's m, s still depend on x); a hidden
    unit sees the inputs of degree <= its own, an output of degree d the hidden units of
    degree < d: m_d and s_d never see z_d or any later dimension.
    """

    def __init__(self, latent_dim: int, context_dim: int, hidden_dim: int, order: Tensor) -> None:
        super().__init__()
        hidden_degree = torch.arange(hidden_dim) % latent_dim
        in_mask = (order[None, :] <= hidden_degree[:, None]).float()  # (H, D)
        out_mask = (hidden_degree[None, :] < order[:, None]).float()  # (D, H)
        self.hidden = MaskedLinear(latent_dim, hidden_dim, in_mask)
        self.context = nn.Linear(context_dim, hidden_dim)
        self.mean = MaskedLinear(hidden_dim, latent_dim, out_mask)
        self.gate = MaskedLinear(hidden_dim, latent_dim, out_mask)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        h = F.elu(self.hidden(z) + self.context(context))
        return self.mean(h), self.gate(h)


class InverseAutoregressiveFlow(Posterior):
    """``num_flows`` IAF steps (Kingma et al., 2016), each a MADE of z and the context:
    (m, s) = MADE(z, context), sigma = sigmoid(s), z <- sigma * z + (1 - sigma) * m.

    The numerically stable, LSTM-like update of the paper: log |det| = sum_d log sigma_d
    (the Jacobian is triangular in the step's order, its diagonal sigma). The order is
    reversed from one step to the next, so that every dimension can depend on every other.
    The gate's bias starts at +2 (sigma ~ 0.88), close to the identity, as the paper advises.
    Cost: per step and sample, a D -> ``hidden_dim`` -> 2D masked network.
    """

    is_gaussian = False

    def __init__(
        self, latent_dim: PositiveInt, num_flows: PositiveInt = 4, hidden_dim: PositiveInt = 128
    ) -> None:
        super().__init__(latent_dim)
        forward_order = torch.arange(1, latent_dim + 1)
        self.steps = nn.ModuleList(
            MADE(
                latent_dim,
                2 * latent_dim,
                hidden_dim,
                forward_order if t % 2 == 0 else forward_order.flip(0),
            )
            for t in range(num_flows)
        )
        with torch.no_grad():
            for step in self.steps:
                step.gate.bias.fill_(2.0)

    def transform(self, z0: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        weight_dtype = self.steps[0].hidden.weight.dtype
        context = context.to(weight_dtype)
        z, log_det = z0, at_least_float32_zeros(z0)
        for step in self.steps:  # the steps compose: one after the other
            m, s = step(z.to(weight_dtype), context)
            sigma = torch.sigmoid(s.to(z.dtype))
            z = sigma * z + (1 - sigma) * m.to(z.dtype)
            log_det = log_det + F.logsigmoid(s).sum(dim=-1)
        return z, log_det
