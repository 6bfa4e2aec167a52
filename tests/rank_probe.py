"""A test-only Lightning callback: each DDP rank writes down what it saw, for test_ddp.py."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    """Writes ``<folder>/rank<r>.json``: the rank's seed, its training shards and eval batches."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.record: dict = {"train_indices": [], "val_batch_sizes": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            initial_seed=torch.initial_seed(),
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The indices the data module's sampler gives this rank this epoch.
        self.record["train_indices"].append(trainer.train_dataloader.sampler.indices().tolist())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.record["val_batch_sizes"].append(len(batch[0]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record))
