"""The IWAE estimator's fast log p(x|z) for a Bernoulli MLP decoder (models/linear_bernoulli.py):
the same numbers as torch.distributions' Bernoulli on the decoder's logits, used only where its
identities describe the model."""

import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli

from vae_lightning.models import linear_bernoulli
from vae_lightning.models.conditional import mlp_cvae
from vae_lightning.models.iwae import iwae_log_likelihood
from vae_lightning.models.likelihoods import Bernoulli, ContinuousBernoulli
from vae_lightning.models.linear_bernoulli import (
    SUB_BLOCK_ROWS,
    LinearBernoulliLogLikelihood,
    exp2_of_nonpositive,
    product_layout,
    softplus_sum,
)
from vae_lightning.models.objectives import decoder_log_likelihood
from vae_lightning.models.vae import conv_vae, mlp_vae


def wide_logit_mlp(image_shape, dtype=torch.float32, hidden_dims=(16,), activation="relu"):
    """An MLP VAE whose logits reach far past softplus's linear regime (|l| up to ~60)."""
    torch.manual_seed(0)
    net = mlp_vae(image_shape, latent_dim=4, hidden_dims=hidden_dims, activation=activation)
    net = net.to(dtype)
    readout = net.decoder.body[-2]
    with torch.no_grad():
        readout.weight.mul_(8)
        readout.bias.copy_(torch.linspace(-40, 40, readout.out_features))
    return net


def oracle_log_px(net, z, x):
    """log p(x|z) by torch.distributions in float64 on the decoder's own logits: (n, B)."""
    n, batch = z.shape[:2]
    logits = net.decode(z.flatten(0, 1)).unflatten(0, (n, batch)).double()
    return TorchBernoulli(logits=logits).log_prob(x.double()).flatten(2).sum(-1)


def binary_images(batch, image_shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *image_shape, generator=g) < 0.3).float()


@pytest.mark.parametrize(
    ("image_shape", "hidden_dims", "activation"),
    [((1, 28, 28), (16,), "relu"), ((1, 11, 13), (16, 8), "tanh"), ((2, 5, 7), (), "elu")],
)
def test_float64_equals_torch_distributions_to_rounding(image_shape, hidden_dims, activation):
    """In float64 the identities leave nothing but rounding: 1e-9 nats. Several decoder blocks
    (n x B above SUB_BLOCK_ROWS), pixel counts whose products are over 98, 13 and 70 pixels,
    and decoders with one, two and no hidden layers."""
    net = wide_logit_mlp(image_shape, torch.float64, hidden_dims, activation)
    batch = 3
    n = SUB_BLOCK_ROWS // batch + 5
    z = torch.randn(n, batch, 4, dtype=torch.float64)
    x = binary_images(batch, image_shape).double()
    fast = LinearBernoulliLogLikelihood.of(net, Bernoulli())
    assert fast is not None
    torch.testing.assert_close(fast(z, x), oracle_log_px(net, z, x), atol=1e-9, rtol=0)


def test_float32_within_float32_rounding_of_the_oracle():
    """Float32 sums over 784 pixels of terms up to ~60 nats: within 2e-3 nats of float64, as
    close as the generic float32 path."""
    net = wide_logit_mlp((1, 28, 28))
    z, x = torch.randn(50, 8, 4), binary_images(8, (1, 28, 28))
    fast = LinearBernoulliLogLikelihood.of(net, Bernoulli())
    oracle = oracle_log_px(net, z, x)
    generic = decoder_log_likelihood(net, Bernoulli(), z, x)
    assert (fast(z, x).double() - oracle).abs().max() < 2e-3
    assert (generic.double() - oracle).abs().max() < 2e-3


@pytest.mark.parametrize("polynomial_exp2", [False, True])
def test_softplus_sum_handles_extreme_logits(polynomial_exp2):
    """Logits of +-100 and +-1e4 (exp(-|l|) underflows to 0), and a column of 112 zeros: a
    product of 112 factors of 2, 2^112."""
    column = torch.tensor([-100.0, 100.0, 0.0, 1e-6, 1e4, -1e4, -3.0] * 16)
    logits = torch.stack([column, torch.zeros(112)], dim=-1).flatten()[None]
    expected = torch.nn.functional.softplus(logits.double()).sum(-1)
    total = softplus_sum(logits, 112, polynomial_exp2)
    torch.testing.assert_close(total.double(), expected, atol=1e-4, rtol=1e-7)  # 16e4 nats
    # softplus(-inf) = 0 and softplus(inf) = inf.
    infinite = torch.tensor([[-float("inf"), 0.0], [float("inf"), 0.0]])
    expected = torch.tensor([math.log(2), float("inf")])
    torch.testing.assert_close(softplus_sum(infinite, 2, polynomial_exp2), expected)


def test_polynomial_exp2_within_float32_rounding():
    """The compiled pass's 2^b: within 2e-7 relative of float64 exp2 on [-126, 0], from 0 to
    2^-126 below (where 1 + 2^b is 1 in float32); NaN stays NaN."""
    b = torch.linspace(-126, 0, 1_000_001)
    relative = exp2_of_nonpositive(b, polynomial=True).double() / torch.exp2(b.double()) - 1
    assert relative.abs().max() < 2e-7
    below = exp2_of_nonpositive(torch.tensor([-126.5, -200.0, -float("inf")]), polynomial=True)
    assert (below <= 2.0**-126).all() and (below > 0).all()
    assert exp2_of_nonpositive(torch.tensor([float("nan")]), polynomial=True).isnan().all()


def test_product_layout_divides_and_bounds_the_products():
    """At most 120 factors per product (2^120 < float32's 2^128), columns a multiple of 8
    where P allows."""
    assert product_layout(784) == (98, 8) and product_layout(3 * 32 * 32) == (96, 32)
    assert product_layout(143) == (13, 11) and product_layout(127) == (1, 127)
    for pixels in range(1, 5000):
        factors, columns = product_layout(pixels)
        assert factors * columns == pixels and factors <= 120


def test_iwae_estimate_unchanged_by_the_shortcut():
    """Same generator seed, same chunks: the IWAE estimate of the fast path is the generic
    path's to float32 rounding."""
    net = wide_logit_mlp((1, 28, 28))
    x = binary_images(6, (1, 28, 28))
    mu, logvar = net.encode(x)
    fast = LinearBernoulliLogLikelihood.of(net, Bernoulli())

    def estimate(log_px_given_z):
        gen = torch.Generator().manual_seed(3)
        return iwae_log_likelihood(x, mu, logvar, log_px_given_z, 200, 256, gen)

    generic = estimate(lambda z, images: decoder_log_likelihood(net, Bernoulli(), z, images))
    torch.testing.assert_close(estimate(fast), generic, atol=2e-3, rtol=0)


def test_compiled_blocks_give_the_eager_numbers_under_inference_mode():
    """The torch.compile'd readout (CPU, as vae-eval runs it under Lightning's inference
    mode) computes the same numbers; blocks of two sizes (a full one and the remainder)."""
    net = wide_logit_mlp((1, 28, 28))
    decoder = net.decoder
    eager = LinearBernoulliLogLikelihood(decoder)
    compiled = LinearBernoulliLogLikelihood(decoder, compile_blocks=True)
    batch = 16
    with torch.inference_mode():
        z, x = (
            torch.randn(SUB_BLOCK_ROWS // batch + 3, batch, 4),
            binary_images(batch, (1, 28, 28)),
        )
        torch.testing.assert_close(compiled(z, x), eager(z, x), atol=2e-3, rtol=0)


def test_used_only_where_its_identities_hold():
    mlp = mlp_vae((1, 28, 28))
    assert LinearBernoulliLogLikelihood.of(mlp, Bernoulli()) is not None
    assert LinearBernoulliLogLikelihood.of(mlp, ContinuousBernoulli()) is None
    assert LinearBernoulliLogLikelihood.of(mlp.to(torch.bfloat16), Bernoulli()) is None
    assert LinearBernoulliLogLikelihood.of(conv_vae((1, 28, 28)), Bernoulli()) is None
    labels = torch.zeros(2, dtype=torch.long)
    assert LinearBernoulliLogLikelihood.of(mlp_cvae((1, 28, 28)), Bernoulli(), labels) is None
    # Its decode sees the labels, so even without them it is not the plain decoder.
    assert LinearBernoulliLogLikelihood.of(mlp_cvae((1, 28, 28)), Bernoulli()) is None


def test_a_failed_compile_falls_back_to_eager_ops_once_per_process(monkeypatch):
    """Where torch.compile fails (a stand-in raising as inductor does without a C++
    compiler), the first batch warns and evaluates eagerly, and later batches, each with its
    own LinearBernoulliLogLikelihood, do not try to compile again."""
    attempts = []

    def failing_compiled_block(*args):
        attempts.append(args)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(
        linear_bernoulli, "compiled_block_log_likelihood", lambda: failing_compiled_block
    )
    monkeypatch.setattr(linear_bernoulli, "_compile_failed", False)
    decoder = wide_logit_mlp((1, 28, 28)).decoder
    z, x = torch.randn(5, 4, 4), binary_images(4, (1, 28, 28))
    expected = LinearBernoulliLogLikelihood(decoder)(z, x)
    with pytest.warns(UserWarning, match="torch.compile of the IWAE decoder blocks failed"):
        first_batch = LinearBernoulliLogLikelihood(decoder, compile_blocks=True)(z, x)
    second_batch = LinearBernoulliLogLikelihood(decoder, compile_blocks=True)(z, x)
    assert len(attempts) == 1
    torch.testing.assert_close(first_batch, expected)
    torch.testing.assert_close(second_batch, expected)
