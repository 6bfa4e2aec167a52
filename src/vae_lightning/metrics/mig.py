"""Mutual Information Gap (Chen et al., 2018), as disentanglement_lib's ``mig``.

The mean codes are discretised into 20 equal-width bins per dimension; for each factor k the
mutual information I(c_j; v_k) (nats, from the joint histogram) with every code dimension j is
sorted, and the gap between the two largest is divided by the factor's entropy H(v_k). MIG is
the mean over factors: 1 when each factor is captured entirely by one dimension and by no
other, 0 when the two best dimensions know equally much (or nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.metrics.sampling import (
    check_pair,
    draw_rows,
    histogram_bins,
    varying_factors,
)

NUM_TRAIN = 10000  # disentanglement_lib: mig.num_train
NUM_BINS = 20  # disentanglement_lib: discretizer.num_bins


def entropy(labels: Tensor) -> Tensor:
    """Entropy (nats, float64) of the empirical distribution of integer ``labels`` (N,)."""
    p = torch.bincount(labels - labels.min()).double()
    p = p[p > 0] / len(labels)
    return -(p * p.log()).sum()


def mutual_information(a: Tensor, b: Tensor) -> Tensor:
    """I(a; b) in nats of two integer labellings (N,): H(a) + H(b) - H(a, b), the
    plug-in estimate from their joint histogram (sklearn's ``mutual_info_score``)."""
    a, b = a - a.min(), b - b.min()
    joint = a * (int(b.max()) + 1) + b
    return entropy(a) + entropy(b) - entropy(joint)


def mutual_information_matrix(bins: Tensor, factors: Tensor) -> Tensor:
    """(D, K) float64: I(code bin j; factor k) for every pair."""
    return torch.stack(
        [
            torch.stack(
                [mutual_information(bins[:, j], factors[:, k]) for k in range(factors.shape[1])]
            )
            for j in range(bins.shape[1])
        ]
    )


def mig_from_bins(bins: Tensor, factors: Tensor) -> float:
    """MIG of already discretised codes (N, D) int and factors (N, K) int, D >= 2."""
    if bins.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions (a gap between the top two)")
    info = mutual_information_matrix(bins, factors)
    top_two = info.topk(2, dim=0).values
    entropies = torch.stack([entropy(factors[:, k]) for k in range(factors.shape[1])])
    return float(((top_two[0] - top_two[1]) / entropies).mean())


def mig(
    codes: Tensor,
    factors: Tensor,
    num_train: int = NUM_TRAIN,
    num_bins: int = NUM_BINS,
    generator: torch.Generator | None = None,
) -> float:
    """MIG of ``num_train`` rows drawn from (codes, factors); constant factors left out."""
    check_pair(codes, factors)
    rows = draw_rows(len(codes), num_train, generator or torch.Generator().manual_seed(0))
    codes, factors = codes[rows].cpu(), varying_factors(factors[rows].cpu())
    return mig_from_bins(histogram_bins(codes, num_bins), factors)
