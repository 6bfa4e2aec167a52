"""log p(x|z) of a Bernoulli decoder whose last layer is Linear: the IWAE estimator's fast path.

``Bernoulli.log_prob`` sums x_j l_j - softplus(l_j) over the P pixels of the logits
l = W h + b, h being the decoder's last hidden layer (H units). For k samples per image two
identities remove most of the work that is not the decoder's matrix products:

- sum_j x_j l_j = h . (W^T x) + b . x, for any x: W^T x and b . x are one small matrix
  product per image, then each sample costs a dot product of length H instead of a pass over
  its P logits;
- sum_j softplus(l_j) = sum_j max(l_j, 0) + log prod_j (1 + exp(-|l_j|)), the product taken
  over groups of at most ``MAX_GROUP`` pixels: each factor is in (1, 2], so a group's product
  stays below 2^120, inside float32's range. One exp per pixel and one log per group, where
  softplus costs an exp and a log1p per pixel; the rounding of the products (at most G
  float32 roundings per group) is of the order of that of the float32 sums over the pixels.
  The groups are strided ("vertical"): a row's P logits are viewed as (G, P / G) and each
  product runs over G logits P / G apart, so that it is an elementwise product of G
  contiguous vectors (784 = 98 x 8: one AVX2 vector of 8 products, one vectorised log per
  row), not a horizontal reduction across a vector's lanes (:func:`product_layout`).

The logits of ``SUB_BLOCK_ROWS`` decoder rows are made and consumed together, so they stay in
cache (the estimator's chunks, ``chunk_rows``, bound memory; these bound cache traffic), and on
a CPU each block is compiled (torch.compile: the matrix products, then one fused loop over the
logits) once a batch has enough samples to repay the compilation. Compiled, the exp of float32
logits is a polynomial in float32 ops (:func:`exp2_of_nonpositive`) that inductor vectorises in
that loop, h . W^T x is fused into the activation's pass (:func:`image_term`), and glibc is told
to keep the blocks' buffers mapped (:func:`keep_block_buffers_mapped`). In process,
a block costs 1.12x the bare matrix products of its FLOPs on a 2-core EPYC (0.66 ns per logit
more), 1.25x with 112-pixel groups and torch's exp2 (docs/speed.md, "Evaluation"). The numbers
are those of ``decoder_log_likelihood`` up to float32 rounding (tested against
torch.distributions in float64); everything else (models whose ``decode`` is not the plain
decoder, other decoders or likelihoods, labels) keeps the generic path. bf16 weights keep it
too: this path is for float32 (and float64) CPUs without native bf16 arithmetic, where bf16
would not pay.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vae_lightning.models.decoders import MLPDecoder
from vae_lightning.models.likelihoods import Bernoulli, Likelihood
from vae_lightning.models.vae import VAE

# Decoder rows whose logits are made and summed at a time: 2048 x 784 float32 logits are
# 6.4 MB, inside the L3 cache of a server CPU; larger blocks spill to memory and smaller ones
# pay more per-operation overhead (measured on a 2-core EPYC: docs/speed.md, "Evaluation").
SUB_BLOCK_ROWS = 2048
# At most this many factors (1 + exp(-|l|)) <= 2 multiply into one group: 2^120 < 2^128.
MAX_GROUP = 120
# Products are computed this many at a time, side by side: one AVX2 vector of float32.
VECTOR_WIDTH = 8
# torch.compile of the blocks costs a few seconds per process; it is used on a CPU when one
# batch decodes at least this many rows (k samples x B images), where it saves more than that.
COMPILE_MIN_ROWS = 2**18
LOG2_E = 1 / math.log(2)
# glibc's malloc: allocations from this size are mmapped, and free memory at the top of the
# heap beyond the trim size is given back (mallopt's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).
MMAP_THRESHOLD_BYTES = 16 * 2**20
TRIM_THRESHOLD_BYTES = 32 * 2**20
# 2^r on [-1/2, 1/2], degree 6: coefficients of the least-squares fit of (p(r) - 2^r) / 2^r at
# 2000 Chebyshev nodes, in float64 (numpy.linalg.lstsq); relative error 2e-9, 1e-7 (float32's
# rounding) when evaluated in float32.
EXP2_COEFFICIENTS = (
    1.0000000006,
    0.6931472056,
    0.24022646609,
    0.055503289975,
    0.0096185195344,
    0.0013399860363,
    0.00015337576831,
)


def product_layout(num_pixels: int) -> tuple[int, int]:
    """(G, P / G): a row's P logits viewed as G rows of P / G, each product taken over the G
    (at most ``MAX_GROUP``) logits of one column. G is the largest divisor of P that leaves a
    multiple of ``VECTOR_WIDTH`` columns (784 -> (98, 8), 3072 -> (96, 32)), else the largest
    divisor (143 -> (13, 11)); a prime P above MAX_GROUP gets G = 1, i.e. a log per pixel."""
    divisors = [g for g in range(1, MAX_GROUP + 1) if num_pixels % g == 0]
    aligned = [g for g in divisors if (num_pixels // g) % VECTOR_WIDTH == 0]
    factors = max(aligned or divisors)
    return factors, num_pixels // factors


def exp2_of_nonpositive(b: Tensor, polynomial: bool = False) -> Tensor:
    """2^b for b <= 0. With ``polynomial`` and float32, in ops that inductor turns into one
    vectorised loop: 2^b = 2^n 2^(b - n), n = round(b), the second factor a polynomial on
    [-1/2, 1/2] and the first an exponent written into a float's bits. It is the pass's
    costliest step, and this is cheaper than torch's exp2 (Sleef) compiled: 0.69 vs 0.82 ms
    for the pass over 2000 x 784 logits on a 2-core EPYC, within 1e-7 relative of 2^b. b is
    clamped to -126 so that 2^n stays a normal float; 1 + 2^-126 is 1 in float32. Eager, the
    dozen ops would each be a pass over the logits: there it is torch's exp2."""
    if not polynomial or b.dtype != torch.float32:
        return torch.exp2(b)
    b = b.clamp(min=-126.0)
    n = b.round()
    r = b - n
    power = EXP2_COEFFICIENTS[-1]
    for coefficient in reversed(EXP2_COEFFICIENTS[:-1]):
        power = power * r + coefficient  # Horner: fused multiply-adds once compiled
    # The float with biased exponent 127 + n (in [1, 127]) and a zero mantissa: 2^n.
    scale = ((n + 127).to(torch.int32) << 23).view(torch.float32)
    return power * scale


def softplus_sum(logits: Tensor, factors: int, polynomial_exp2: bool = False) -> Tensor:
    """sum_j softplus(l_j) over the last dimension, with one exp per logit and one log per
    product of ``factors`` logits taken down the columns of the (factors, P / factors) view
    (module docstring): (..., P) -> (...). Both sums run over the same columns, so that
    compiled they are one loop over the logits."""
    columns = logits.unflatten(-1, (factors, -1))
    # exp2 is cheaper than exp in torch's vectorised CPU code (5.9 vs 7.4 ms per 16384 x 784
    # logits, compiled, 2-core EPYC); scaling the argument costs a relative error of
    # |l| 2^-24 in exp(-|l|) <= 2^-|l|, below float32's resolution of the factor.
    products = (1 + exp2_of_nonpositive(columns.abs() * -LOG2_E, polynomial_exp2)).prod(dim=-2)
    return (columns.clamp(min=0).sum(dim=-2) + products.log()).sum(dim=-1)


def image_term(hidden: Tensor, x_weight: Tensor) -> Tensor:
    """h . W^T x for the hidden layers' rows (n B, H), code-major, and the images' W^T x
    (B, H): (n B,).

    Compiled, W^T x is expanded to a row per code (a view inductor indexes, no copy), so that
    the product has the loop nest of the activation and fuses into its pass while h is in
    cache; written per (n, B) it was left to the logits' pass, which read h again from
    memory: 9.9 vs 10.3 ms per 2000 x 784 block, against an 8.9 ms bound (2-core EPYC).
    Eager, that expansion would be a copy: there the product broadcasts over (n, B, H)."""
    if torch.compiler.is_compiling():
        codes = hidden.shape[0] // x_weight.shape[0]
        return (hidden * x_weight.expand(codes, -1, -1).flatten(0, 1)).sum(dim=-1)
    return (hidden.unflatten(0, (-1, x_weight.shape[0])) * x_weight).sum(dim=-1).flatten()


def block_log_likelihood(
    z: Tensor,
    hidden_layers: tuple[tuple[Tensor, Tensor], ...],
    activation: nn.Module,
    weight_t: Tensor,
    bias: Tensor,
    x_weight: Tensor,
    x_bias: Tensor,
    factors: int,
) -> Tensor:
    """log p(x|z) for codes z (n, B, D): the decoder's hidden layers (each h -> act(h W^T + b)
    with W^T given as ``(weight_t, bias)``), then its Linear readout (``weight_t`` (H, P),
    ``bias`` (P,)) summed against the images through their W^T x (B, H) and b . x (B,): (n, B).

    Each layer is a matrix product and an addition: compiled, the addition fuses into the pass
    that reads the product (``F.linear`` would first copy b into every output row). The
    logits' products are over ``factors`` pixels each (:func:`softplus_sum`); compiled, their
    exp is the polynomial one, one fused loop there and a dozen passes eager.
    """
    # Products of 3-d operands: on 2-d ones inductor turns matmul + bias into addmm, which
    # first copies the bias into every output row (10 % of vae-eval's IWAE time).
    hidden = z
    for layer_weight_t, layer_bias in hidden_layers:
        hidden = activation(torch.matmul(hidden, layer_weight_t) + layer_bias)
    logits = torch.matmul(hidden, weight_t) + bias
    softplus = softplus_sum(logits, factors, polynomial_exp2=torch.compiler.is_compiling())
    image_terms = image_term(hidden.flatten(0, 1), x_weight).unflatten(0, z.shape[:2])
    return image_terms + x_bias - softplus


@functools.cache
def keep_block_buffers_mapped() -> None:
    """Let glibc's malloc serve a block's buffers (6.3 MB of logits for 2048 x 784) from its
    heap, mapped once, instead of mmapping each one afresh.

    Compiled blocks allocate their buffers on every call. By default glibc mmaps an
    allocation the size of the largest freed mmapped one, so every block's logits were fresh
    pages, each faulted in and zeroed as the matrix product wrote it: 10 % of vae-eval's IWAE
    time (2-core EPYC, k = 5000: 1.29x the matmul bound, 1.17x with these settings). The
    process keeps up to ``TRIM_THRESHOLD_BYTES`` of freed memory. Elsewhere than glibc (no
    ``mallopt``), nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)
        libc.mallopt(m_trim_threshold, TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # a libc without mallopt (e.g. not glibc)
        return


# Set once torch.compile of the blocks has failed in this process (e.g. no C++ compiler): the
# later test batches, each with its own LinearBernoulliLogLikelihood, then take the eager ops
# at once instead of each failing to compile again (seconds per batch).
_compile_failed = False


@functools.cache
def compiled_block_log_likelihood() -> Callable[..., Tensor]:
    """One torch.compile of :func:`block_log_likelihood` per process: each test batch builds
    its own :class:`LinearBernoulliLogLikelihood`, and a new ``torch.compile`` wrapper per
    batch would trace and compile again (and hit dynamo's recompile limit)."""
    # Static shapes: code compiled for symbolic sizes ran 15 % slower. vae-eval's blocks take
    # three shapes (full blocks and the remainders of a chunk and of the last chunk), each
    # compiled once (about 1.5 s with inductor's on-disk cache warm).
    return torch.compile(block_log_likelihood, dynamic=False)


class LinearBernoulliLogLikelihood:
    """log p(x|z) of ``net``'s decoder under a Bernoulli likelihood, for z of shape (n, B, D)
    against x (B, C, H, W): the same numbers as ``decoder_log_likelihood``, faster.

    Build it with :meth:`of`, which returns None where the identities do not describe the
    model (then use the generic path).
    """

    def __init__(self, decoder: MLPDecoder, compile_blocks: bool = False) -> None:
        *hidden, self.readout = [m for m in decoder.body if isinstance(m, nn.Linear)]
        # Weights as contiguous W^T, the layout of the bound's bare matrix products; copied
        # once per test batch (1.3 MB for 784-400-20), so they follow the trained weights.
        self.hidden_layers = tuple((m.weight.T.contiguous(), m.bias) for m in hidden)
        self.readout_weight_t = self.readout.weight.T.contiguous()
        self.activation = decoder.body[1] if hidden else nn.Identity()
        self.factors, _ = product_layout(self.readout.out_features)
        self.block_fn: Callable[..., Tensor] = block_log_likelihood
        if compile_blocks and not _compile_failed:
            self.block_fn = compiled_block_log_likelihood()
            keep_block_buffers_mapped()
        self.images: Tensor | None = None  # the x whose W^T x and b . x are cached
        self.image_terms: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))

    @classmethod
    def of(
        cls,
        net: nn.Module,
        likelihood: Likelihood,
        labels: Tensor | None = None,
        samples_per_batch: int = 0,
    ) -> LinearBernoulliLogLikelihood | None:
        """The fast log p(x|z) of ``net`` and ``likelihood``, or None where it does not apply:
        only a Bernoulli likelihood, a model whose ``decode`` is the plain ``VAE.decode`` (no
        labels) with an ``MLPDecoder`` ending in Linear, and float32 or float64 weights.
        ``samples_per_batch`` (k x B) decides whether the blocks are compiled (CPU only)."""
        if type(likelihood) is not Bernoulli or labels is not None:
            return None
        if not isinstance(net, VAE) or type(net).decode is not VAE.decode:
            return None
        decoder = net.decoder
        if not isinstance(decoder, MLPDecoder) or not isinstance(decoder.body[-2], nn.Linear):
            return None
        # MLPDecoder's body: (Linear, activation) per hidden layer, then Linear, Unflatten.
        *layers, readout, _ = decoder.body
        linears, activations = layers[0::2], layers[1::2]
        if any(not isinstance(m, nn.Linear) or m.bias is None for m in [*linears, readout]):
            return None
        if len({type(m) for m in activations}) > 1:
            return None
        weight = decoder.body[-2].weight
        if weight.dtype not in (torch.float32, torch.float64) or weight.device.type == "meta":
            return None
        compile_blocks = weight.device.type == "cpu" and samples_per_batch >= COMPILE_MIN_ROWS
        return cls(decoder, compile_blocks)

    def terms_of(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """W^T x (B, H) and b . x (B,) of the images, computed once per batch."""
        if x is not self.images:
            flat = x.flatten(1).to(self.readout.weight.dtype)
            self.image_terms = (flat @ self.readout.weight, flat @ self.readout.bias)
            self.images = x
        return self.image_terms

    def run_block(self, z: Tensor, x_weight: Tensor, x_bias: Tensor) -> Tensor:
        """The (compiled, if chosen) block; falls back to eager ops for the rest of the
        process, with a warning, if compiling fails (e.g. no C++ compiler): the same numbers
        to float32 rounding (the eager ops take torch's exp2, not the polynomial)."""
        global _compile_failed
        args = (
            z,
            self.hidden_layers,
            self.activation,
            self.readout_weight_t,
            self.readout.bias,
            x_weight,
            x_bias,
            self.factors,
        )
        try:
            return self.block_fn(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager ops remain
            if self.block_fn is block_log_likelihood:
                raise
            warnings.warn(
                f"torch.compile of the IWAE decoder blocks failed ({type(error).__name__}: "
                f"{error}); evaluating with eager ops (the same numbers to float32 rounding, "
                "slower).",
                stacklevel=2,
            )
            _compile_failed = True
            self.block_fn = block_log_likelihood
            return self.block_fn(*args)

    @torch.no_grad()
    def __call__(self, z: Tensor, x: Tensor) -> Tensor:
        x_weight, x_bias = self.terms_of(x)
        n, batch = z.shape[:2]
        z = z.to(self.readout.weight.dtype)
        per_block = max(1, SUB_BLOCK_ROWS // batch)  # fixed, so that few shapes compile
        # Each block is copied (20 floats a row): a view's storage offset would be one more
        # thing the compiled code is specialised and recompiled for.
        return torch.cat(
            [
                self.run_block(z[start : start + per_block].clone(), x_weight, x_bias)
                for start in range(0, n, per_block)
            ]
        )
