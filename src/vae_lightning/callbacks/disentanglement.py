"""Representation metrics during training: ``val/mig``, ``val/dci_*``, ``val/sap``,
``val/factorvae_score`` and ``val/tc`` every N epochs (docs/metrics.md). ``val/active_units``
comes from the posterior_collapse callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import torch
from pydantic import PositiveInt
from torch import Tensor

from vae_lightning.callbacks.base import ENCODE_CHUNK, is_due
from vae_lightning.data.datamodule import prepare_images
from vae_lightning.errors import ConfigError
from vae_lightning.metrics import NEEDS_FACTORS, code_metrics
from vae_lightning.seeding import EVAL_SEED

CodeMetric = Literal["mig", "dci", "sap", "factorvae", "tc"]


@dataclass(eq=False)  # callbacks compare and hash by identity, as Lightning expects
class DisentanglementMetrics(L.Callback):
    """Logs the named metrics of the posterior means of the first ``num_images`` validation
    images (with their ground-truth factors where the data module has ``factors("val")``).

    Off while ``metrics`` is empty (the default). The same images every time, and every
    rank computes the same figures from the whole validation split (no sharding), so each
    rank holds the same ``val/<figure>`` for checkpointing or sweeps. The metrics' own sample
    draws use the evaluation seed: a figure changes only because the model did.
    """

    metrics: list[CodeMetric] = field(default_factory=list)
    num_images: PositiveInt = 10000
    every_n_epochs: PositiveInt = 1

    def __post_init__(self) -> None:
        self.metrics = list(self.metrics)  # Hydra hands a ListConfig

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wanted = [name for name in self.metrics if name in NEEDS_FACTORS]
        datamodule = trainer.datamodule
        if wanted and not callable(getattr(datamodule, "factors", None)):
            raise ConfigError(
                f"callbacks.disentanglement.metrics asks for {', '.join(wanted)}, which need "
                f"the ground-truth factors of the images, but the data "
                f"({getattr(datamodule, 'dataset', type(datamodule).__name__)}) has none. "
                "Train on data with factors (data=dsprites), or keep to tc."
            )

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.metrics or not is_due(trainer, self.every_n_epochs):
            return
        datamodule = trainer.datamodule
        images, labels = datamodule.splits["val"]
        images, labels = images[: self.num_images], labels[: self.num_images]
        factors = None
        if any(name in NEEDS_FACTORS for name in self.metrics):
            factors = datamodule.factors("val")[: self.num_images].cpu()
        codes = self.posterior_means(pl_module, images, labels)
        for key, value in code_metrics(self.metrics, codes, factors, seed=EVAL_SEED).items():
            pl_module.log(f"val/{key}", value, prog_bar=False)

    @staticmethod
    def posterior_means(pl_module: L.LightningModule, images: Tensor, labels: Tensor) -> Tensor:
        net = pl_module.net
        means = []
        for start in range(0, len(images), ENCODE_CHUNK):
            chunk = images[start : start + ENCODE_CHUNK].to(pl_module.device)
            x = prepare_images(chunk, fresh_draw=False).to(net.dtype)
            chunk_labels = labels[start : start + ENCODE_CHUNK].to(pl_module.device)
            mu, _ = net.encode_code(x, chunk_labels if net.conditional else None)
            means.append(mu.float().cpu())
        return torch.cat(means)
