"""Separated Attribute Predictability (Kumar et al., 2018), as disentanglement_lib's
``sap_score`` with ``continuous_factors=False`` (its default).

For every code dimension j and factor k a classifier predicts the factor's class from that one
dimension; S[j, k] is its accuracy on held-out rows. SAP is the mean over factors of the gap
between the best and second-best dimension's accuracy.

The classifier differs: disentanglement_lib fits sklearn's ``LinearSVC(C=0.01,
class_weight="balanced")`` to each 1-D code; here it is the nearest class mean, which in one
dimension is also a linear multiclass rule (argmax_c of 2 m_c x - m_c^2, intervals cut at the
midpoints of adjacent class means), needs no fitting loop and no sklearn, and has a closed form
the tests work by hand. Both give a dimension that separates the classes in order a high
score and an uninformative one chance-level accuracy; the values of the two rules differ
when class means are close or classes overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.metrics.sampling import check_pair, train_test_rows, varying_factors

NUM_TRAIN = 10000  # disentanglement_lib: sap_score.num_train
NUM_TEST = 5000  # disentanglement_lib: sap_score.num_test


def nearest_mean_accuracy(
    train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor
) -> Tensor:
    """(D,) float64: per code dimension, the test accuracy of predicting the labels by the
    nearest class mean of that dimension over the train rows (ties: the lowest class)."""
    train_codes, test_codes = train_codes.double(), test_codes.double()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    dims = train_codes.shape[1]
    sums = torch.zeros(num_classes, dims, dtype=torch.float64).index_add_(
        0, train_labels, train_codes
    )
    counts = torch.bincount(train_labels, minlength=num_classes).double()[:, None]
    means = sums / counts.clamp(min=1)  # (C, D)
    distance = (test_codes[None, :, :] - means[:, None, :]).abs()  # (C, N, D)
    distance[counts[:, 0] == 0] = float("inf")  # a class unseen in training is never predicted
    predicted = distance.argmin(dim=0)  # (N, D)
    return (predicted == test_labels[:, None]).double().mean(dim=0)


def sap_matrix(
    train_codes: Tensor, train_factors: Tensor, test_codes: Tensor, test_factors: Tensor
) -> Tensor:
    """S (D, K): accuracy of code dimension j predicting factor k."""
    return torch.stack(
        [
            nearest_mean_accuracy(train_codes, train_factors[:, k], test_codes, test_factors[:, k])
            for k in range(train_factors.shape[1])
        ],
        dim=1,
    )


def sap_from_matrix(scores: Tensor) -> float:
    """Mean over factors (columns) of the top-two gap over code dimensions (rows)."""
    if scores.shape[0] < 2:
        raise ValueError("SAP needs at least two code dimensions (a gap between the top two)")
    top_two = scores.topk(2, dim=0).values
    return float((top_two[0] - top_two[1]).mean())


def sap(
    codes: Tensor,
    factors: Tensor,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    generator: torch.Generator | None = None,
) -> float:
    """SAP on disjoint train/test rows drawn from (codes, factors); constant factors left out."""
    check_pair(codes, factors)
    codes, factors = codes.cpu(), varying_factors(factors.cpu())
    train, test = train_test_rows(
        len(codes), num_train, num_test, generator or torch.Generator().manual_seed(0)
    )
    return sap_from_matrix(sap_matrix(codes[train], factors[train], codes[test], factors[test]))
