"""Disentanglement and representation metrics of mean codes (pure PyTorch; docs/metrics.md).

Each metric family has its module: :mod:`mig`, :mod:`dci`, :mod:`sap`, :mod:`factor_vae`
(ground-truth factors needed) and :mod:`unsupervised` (any data). :func:`code_metrics` runs
the ones named and returns one figure per key.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from vae_lightning.metrics.dci import dci
from vae_lightning.metrics.factor_vae import factor_vae_score
from vae_lightning.metrics.mig import mig
from vae_lightning.metrics.sap import sap
from vae_lightning.metrics.unsupervised import total_correlation
from vae_lightning.models.diagnostics import active_units

# Metrics of the codes: name -> the keys it writes (after "<split>/").
CODE_METRICS = {
    "mig": ("mig",),
    "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness"),
    "sap": ("sap",),
    "factorvae": ("factorvae_score",),
    "tc": ("tc",),
    "active_units": ("active_units",),
}
NEEDS_FACTORS = frozenset({"mig", "dci", "sap", "factorvae"})


def code_metrics(
    names: Iterable[str], codes: Tensor, factors: Tensor | None = None, seed: int = 0
) -> dict[str, float]:
    """The named metrics of mean codes (N, D) and, for those that need them, the factor
    classes (N, K) of the same images. Each metric draws its samples from its own generator
    seeded with ``seed``, so adding one metric never changes another's value."""
    results: dict[str, float] = {}
    for name in names:
        if name not in CODE_METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {sorted(CODE_METRICS)}")
        if name in NEEDS_FACTORS and factors is None:
            raise ValueError(f"metric {name!r} needs the ground-truth factors of the images")
        generator = torch.Generator().manual_seed(seed)
        if name == "mig":
            results["mig"] = mig(codes, factors, generator=generator)
        elif name == "dci":
            figures = dci(codes, factors, generator=generator)
            results.update({f"dci_{key}": value for key, value in figures._asdict().items()})
        elif name == "sap":
            results["sap"] = sap(codes, factors, generator=generator)
        elif name == "factorvae":
            results["factorvae_score"] = factor_vae_score(codes, factors, generator=generator)
        elif name == "tc":
            results["tc"] = total_correlation(codes, generator=generator)
        elif name == "active_units":
            results["active_units"] = float(active_units(codes))
    return results


__all__ = [
    "CODE_METRICS",
    "NEEDS_FACTORS",
    "code_metrics",
    "dci",
    "factor_vae_score",
    "mig",
    "sap",
    "total_correlation",
]
