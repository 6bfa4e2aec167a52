"""Lightning's TensorBoard logger, less the ``epoch`` scalar it adds to every write.

Lightning logs the epoch number next to every metric, which gives TensorBoard an ``epoch``
card among the ELBO terms and an ``epoch`` column in the HParams tab. The step of every point
already says when it was logged, and the checkpoints and ``trainer.current_epoch`` keep the
epoch, so the scalar only clutters what a user looks at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

EPOCH_KEY = "epoch"


class TensorBoardLogger(LightningTensorBoardLogger):
    """Writes every metric but Lightning's automatic ``epoch``."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        kept = {name: value for name, value in metrics.items() if name != EPOCH_KEY}
        if kept:
            super().log_metrics(kept, step)
