"""FactorVAE score (Kim & Mnih, 2018), as disentanglement_lib's ``factor_vae_score``.

Each vote fixes one factor k (drawn uniformly) to the value of a random image, takes a batch
of 64 images sharing that value, divides the variance of each code dimension over the batch by
its variance over the whole data (10,000 images) and votes (k, the dimension of least
normalised variance). Dimensions whose standard deviation over the data is below 0.05 are
collapsed and take no part (disentanglement_lib's ``prune_dims.threshold``). A majority-vote
classifier maps each dimension to the factor that most often chose it on 10,000 training
votes; the score is its accuracy on 5,000 fresh votes: 1 for a code whose each factor has its
own dimension, about 1/K for an uninformative one.

disentanglement_lib draws each batch from the full generative process with the other factors
uniform; here the batch is drawn (with replacement) from the split's images that share the
fixed value, which for a uniformly drawn split is the same distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.metrics.sampling import check_pair, draw_rows, varying_factors

NUM_VARIANCE_ESTIMATE = 10000  # disentanglement_lib: factor_vae_score.num_variance_estimate
NUM_TRAIN = 10000  # factor_vae_score.num_train (votes)
NUM_EVAL = 5000  # factor_vae_score.num_eval (votes)
BATCH_SIZE = 64  # factor_vae_score.batch_size (images per vote)
PRUNE_THRESHOLD = 0.05  # prune_dims.threshold: on the standard deviation


def cast_votes(
    codes: Tensor,
    factors: Tensor,
    scale: Tensor,
    num_votes: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """(K, D) int64 vote counts: factor fixed x dimension of least normalised variance."""
    n, num_factors = factors.shape
    chosen = torch.randint(num_factors, (num_votes,), generator=generator)
    anchor = torch.randint(n, (num_votes,), generator=generator)
    rows = torch.empty(num_votes, batch_size, dtype=torch.long)
    for k in range(num_factors):
        votes_k = (chosen == k).nonzero().squeeze(1)
        if len(votes_k) == 0:
            continue
        # Rows grouped by the value of factor k: a vote draws uniformly within its group.
        order = factors[:, k].argsort(stable=True)
        values = factors[order, k]
        wanted = factors[anchor[votes_k], k]
        start = torch.searchsorted(values, wanted, right=False)
        size = torch.searchsorted(values, wanted, right=True) - start
        offset = (torch.rand(len(votes_k), batch_size, generator=generator) * size[:, None]).long()
        rows[votes_k] = order[start[:, None] + offset.minimum(size[:, None] - 1)]
    local = codes[rows].var(dim=1, unbiased=True) / scale  # (votes, D)
    least = local.argmin(dim=1)
    votes = torch.zeros(num_factors, codes.shape[1], dtype=torch.long)
    return votes.index_put_((chosen, least), torch.ones_like(least), accumulate=True)


def factor_vae_score(
    codes: Tensor,
    factors: Tensor,
    num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
    num_train: int = NUM_TRAIN,
    num_eval: int = NUM_EVAL,
    batch_size: int = BATCH_SIZE,
    prune_threshold: float = PRUNE_THRESHOLD,
    generator: torch.Generator | None = None,
) -> float:
    """The majority-vote classifier's accuracy on ``num_eval`` votes; 0 when every dimension
    is collapsed (as disentanglement_lib)."""
    check_pair(codes, factors)
    generator = generator or torch.Generator().manual_seed(0)
    codes, factors = codes.double().cpu(), varying_factors(factors.cpu())
    rows = draw_rows(len(codes), num_variance_estimate, generator)
    variance = codes[rows].var(dim=0, unbiased=True)
    active = variance.sqrt() >= prune_threshold
    if not active.any():
        return 0.0
    codes, variance = codes[:, active], variance[active]
    train = cast_votes(codes, factors, variance, num_train, batch_size, generator)
    classifier = train.argmax(dim=0)  # (D,): the factor each dimension stands for
    test = cast_votes(codes, factors, variance, num_eval, batch_size, generator)
    dims = torch.arange(codes.shape[1])
    return float(test[classifier, dims].sum() / test.sum())
