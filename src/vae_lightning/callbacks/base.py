"""What the visual callbacks share: the TensorBoard writer, their schedule and fixed images.

The callbacks only use three methods, so they work with any model family, likelihood or
objective: ``pl_module.net.encode_code(x) -> (mu, logvar)`` of the code the pictures walk in
(z, or a hierarchy's top layer), ``pl_module.net.sample_prior(n)`` and
``pl_module.decode_mean(code)`` (the image-shaped mean of p(x|z)). A conditional network
(``net.conditional``, the conditional VAE) also gets the labels: those of the fixed images,
or the class a picture is drawn for; :func:`encode` and :func:`decode` pass them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

# Images per forward pass when encoding a fixed set (bounded memory for ~1000 images).
ENCODE_CHUNK = 500


def tensorboard_writer(trainer: L.Trainer) -> SummaryWriter | None:
    """The SummaryWriter of the run's TensorBoard logger, if there is one."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def is_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Epochs 0, N, 2N, ... and always the last one, so the final state is always logged."""
    if trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
    return epoch % every_n_epochs == 0 or last


def _parameter_dtype(pl_module: L.LightningModule) -> torch.dtype:
    """The dtype inputs must have (bf16 under ``precision=bf16-true``, else float32)."""
    parameter = next(pl_module.parameters(), None)
    return torch.float32 if parameter is None else parameter.dtype


def is_conditional(pl_module: L.LightningModule) -> bool:
    """Whether the network's encoder and decoder take the class labels."""
    return bool(getattr(pl_module.net, "conditional", False))


def _conditioning(pl_module: L.LightningModule, labels: Tensor | None) -> Tensor | None:
    """``labels`` on the module's device for a conditional network; None for the others."""
    if labels is None or not is_conditional(pl_module):
        return None
    return labels.to(pl_module.device)


@torch.no_grad()
def encode(
    pl_module: L.LightningModule, images: Tensor, labels: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Posterior means and log-variances (float32, on the module's device), chunk by chunk.

    ``labels`` (the images' classes) reach only a conditional network."""
    dtype = _parameter_dtype(pl_module)
    labels = _conditioning(pl_module, labels)
    chunks = images.split(ENCODE_CHUNK)
    label_chunks = (
        [()] * len(chunks) if labels is None else [(c,) for c in labels.split(ENCODE_CHUNK)]
    )
    mus, logvars = [], []
    for chunk, chunk_labels in zip(chunks, label_chunks, strict=True):
        # Labels only when there are: a hand-made module may take images alone.
        mu, logvar = pl_module.net.encode_code(chunk.to(pl_module.device, dtype), *chunk_labels)
        mus.append(mu.float())
        logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def decode(pl_module: L.LightningModule, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Decoder means of ``z`` as displayable images: float32 in [0, 1], on the CPU.

    ``labels`` (class indices, or class probabilities per row) reach only a conditional
    network."""
    z = z.to(pl_module.device, _parameter_dtype(pl_module))
    labels = _conditioning(pl_module, labels)
    means = pl_module.decode_mean(z) if labels is None else pl_module.decode_mean(z, labels)
    return means.float().clamp(0.0, 1.0).cpu()


@dataclass(eq=False)  # callbacks compare and hash by identity, as Lightning expects
class VisualCallback(L.Callback):
    """Base of the visual callbacks: fixed validation images and an every-N-epochs schedule.

    The first ``num_images`` validation images (and labels) are kept, from the start of the
    validation loader (rank 0's shard under DDP), during the first real validation epoch (the
    sanity check's are replaced then, as it may see fewer batches); from then on every epoch
    shows the same inputs and the pictures show progress rather than sampling noise.
    Subclasses implement :meth:`log_visuals`, called on rank 0 only, with no gradient, every
    ``every_n_epochs``. Subclasses are dataclasses too: their parameters are typed fields,
    declared once (the config check reads them), with their own defaults.
    """

    num_images: NonNegativeInt = 0
    every_n_epochs: PositiveInt = 1

    def __post_init__(self) -> None:
        if self.every_n_epochs < 1:
            raise ValueError(
                f"every_n_epochs={self.every_n_epochs} for {type(self).__name__}: it must be "
                "at least 1. To switch the callback off, drop it: ~callbacks.<name>."
            )
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._frozen = False  # the fixed set is complete

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._frozen:
            self.images = self.labels = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._frozen = True

    @property
    def num_collected(self) -> int:
        return 0 if self.images is None else len(self.images)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_images - self.num_collected
        if self._frozen or missing <= 0 or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        images, labels = batch[0][:missing].detach().clone(), batch[1][:missing].detach().clone()
        if self.images is None:
            self.images, self.labels = images, labels
        else:
            self.images = torch.cat([self.images, images])
            self.labels = torch.cat([self.labels, labels])

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs) or not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None and (self.num_images == 0 or self.num_collected > 0):
            self.log_visuals(trainer, pl_module, writer)

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        raise NotImplementedError
