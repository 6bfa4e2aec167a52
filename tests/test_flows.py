"""Flow posteriors against autograd: each log-determinant is log |det| of the Jacobian that
torch.autograd.functional computes, log q(z|x) is the base Gaussian's minus every step's
log-determinant, and a flow at the identity gives the Gaussian posterior's log q exactly."""

import functools

import pytest
import torch
from torch.autograd.functional import jacobian

from vae_lightning.models import gaussian
from vae_lightning.models.flows import InverseAutoregressiveFlow, PlanarFlow
from vae_lightning.models.posteriors import GaussianPosterior

FLOWS = {
    "planar": lambda d: PlanarFlow(d, num_flows=3),
    "iaf": lambda d: InverseAutoregressiveFlow(d, num_flows=3, hidden_dim=2 * d + 3),
}


def perturbed(name: str, d: int) -> torch.nn.Module:
    """A flow away from its (near-)identity start, in float64: every parameter random."""
    torch.manual_seed(d)
    flow = FLOWS[name](d).double()
    with torch.no_grad():
        for param in flow.parameters():
            param.normal_(0.0, 0.7)
    return flow


@pytest.mark.parametrize("d", [3, 4, 5])
@pytest.mark.parametrize("name", FLOWS)
def test_log_det_is_the_log_abs_det_of_the_autograd_jacobian(name, d):
    flow = perturbed(name, d)
    context = torch.randn(2 * d, dtype=torch.float64)
    for _ in range(3):
        z0 = 1.5 * torch.randn(d, dtype=torch.float64)
        z, log_det = flow.transform(z0[None, None], context[None, None])
        jac = jacobian(lambda v: flow.transform(v[None, None], context[None, None])[0][0, 0], z0)
        expected = torch.linalg.slogdet(jac).logabsdet
        # slogdet of a strongly contracting Jacobian has ~1e-9 relative error itself
        torch.testing.assert_close(log_det[0, 0], expected, rtol=1e-7, atol=1e-9)
        assert z.shape == (1, 1, d)


@pytest.mark.parametrize("name", FLOWS)
def test_log_q_is_the_base_density_minus_every_steps_log_det(name):
    d, batch, k = 4, 3, 2
    flow = perturbed(name, d)
    mu = torch.randn(batch, d, dtype=torch.float64)
    logvar = torch.randn(batch, d, dtype=torch.float64) * 0.5
    z, log_q = flow.sample(mu, logvar, k, torch.Generator().manual_seed(3))
    z0 = gaussian.sample_k(mu, logvar, k, torch.Generator().manual_seed(3)).z  # same draws
    context = torch.cat([mu, logvar], dim=-1)

    def step(v, b):
        return flow.transform(v[None, None], context[b][None, None])[0][0, 0]

    for i in range(k):
        for b in range(batch):
            log_det = torch.linalg.slogdet(
                jacobian(functools.partial(step, b=b), z0[i, b])
            ).logabsdet
            base = gaussian.log_normal(z0[i, b], mu[b], logvar[b])
            torch.testing.assert_close(log_q[i, b], base - log_det, rtol=1e-7, atol=1e-9)
            torch.testing.assert_close(z[i, b], step(z0[i, b], b))


def identity_iaf(d: int) -> InverseAutoregressiveFlow:
    """An IAF at the identity: gates fully open (sigma = sigmoid(40) = 1 in float64)."""
    flow = InverseAutoregressiveFlow(d, num_flows=2, hidden_dim=8)
    with torch.no_grad():
        for step in flow.steps:
            step.gate.weight.zero_()
            step.gate.bias.fill_(40.0)
    return flow


@pytest.mark.parametrize(
    "flow", [PlanarFlow(4, num_flows=5), identity_iaf(4)], ids=["planar as built", "iaf"]
)
def test_a_flow_at_the_identity_gives_the_gaussian_posterior(flow):
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    z, log_q = flow.sample(mu, logvar, 3, torch.Generator().manual_seed(0))
    z_ref, log_q_ref = GaussianPosterior(4).sample(mu, logvar, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_q, log_q_ref, rtol=0, atol=1e-6)


def test_planar_steps_stay_invertible_whatever_u_and_w():
    d = 3
    flow = PlanarFlow(d, num_flows=1).double()
    with torch.no_grad():  # u = -10 w: w^T u = -10 |w|^2, far below -1 before the correction
        bias = flow.parameters_of_context.bias
        flow.parameters_of_context.weight.zero_()
        bias[d : 2 * d] = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
        bias[:d] = -10 * bias[d : 2 * d]
    z0 = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None].expand(-1, d)[None]
    z, log_det = flow.transform(z0, torch.zeros(1, 301, 2 * d, dtype=torch.float64))
    assert torch.isfinite(log_det).all()  # 1 + u_hat^T psi > 0 everywhere
    # along w, f moves w^T z monotonically: w^T u_hat >= -1 after the correction
    w = flow.parameters_of_context.bias[d : 2 * d]
    assert (z[0] @ w).diff().min() >= 0


def test_an_iaf_step_is_autoregressive_in_its_order_and_the_order_reverses():
    d = 5
    flow = perturbed("iaf", d)
    context = torch.randn(1, 1, 2 * d, dtype=torch.float64)
    first = flow.steps[0]
    jac = jacobian(lambda v: first(v[None, None], context)[0][0, 0], torch.randn(d).double())
    assert torch.equal(jac.triu(), torch.zeros_like(jac))  # m_i sees only z_j, j < i
    second = flow.steps[1]
    jac = jacobian(lambda v: second(v[None, None], context)[0][0, 0], torch.randn(d).double())
    assert torch.equal(jac.tril(), torch.zeros_like(jac))  # reversed: only z_j, j > i
    above = torch.ones(d, d, dtype=torch.bool).triu(1)
    assert (jac[above] != 0).all()  # and every such dependence is there


@pytest.mark.parametrize("name", FLOWS)
def test_gradients_reach_every_flow_parameter(name):
    flow = perturbed(name, 4).float()
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    z, log_q = flow.sample(mu, logvar, 2)
    (z.pow(2).sum() + log_q.sum()).backward()
    for param_name, param in flow.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
