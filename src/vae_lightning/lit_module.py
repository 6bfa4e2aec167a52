"""VAELitModule: the training logic around a pure VAE network. It knows no files."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor
from torchmetrics import MeanMetric

from vae_lightning.models.losses import ELBOTerms, elbo_terms
from vae_lightning.models.vae import VAE, VAEOutput

EVAL_STAGES = ("val", "test")
EVAL_SEED = 0
TERMS = ELBOTerms._fields  # loss, rec, kl, elbo


class VAELitModule(L.LightningModule):
    """Trains a VAE on ``loss = rec + beta * kl`` and logs the ELBO terms in nats per image.

    Arguments are plain data (dicts with ``_target_``), so checkpoints store only primitives
    and ``VAELitModule.load_from_checkpoint(path)`` needs nothing else.

    Args:
        net: config of a function or class returning a :class:`VAE` (e.g. ``mlp_vae``).
        optimizer: config of a ``torch.optim`` class, built with this module's parameters.
        latent_dim: size of z, passed on to ``net``.
        beta: weight of the KL term in the optimised loss (1 is the true ELBO).
        compile: wrap the network in ``torch.compile`` (pays off on GPUs and for long runs;
            see README, Speed).
        channels_last: store the network's conv weights in NHWC memory format, which cuDNN
            and oneDNN prefer (conv models only; no effect on an MLP).
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        latent_dim: int = 20,
        beta: float = 1.0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: VAE = instantiate(net, latent_dim=latent_dim)
        # Epoch means for evaluation, weighted by batch size and synced across DDP ranks, so
        # they are exact per-image averages over the whole split.
        self.epoch_means = torch.nn.ModuleDict(
            {f"{stage}_{term}": MeanMetric() for stage in EVAL_STAGES for term in TERMS}
        )
        self.last_train_values: dict[str, Tensor] = {}  # train/* of the latest training step

    def forward(self, x: Tensor) -> VAEOutput:
        return self.net(x)

    def decode_mean(self, z: Tensor) -> Tensor:
        """The decoder's mean image E[x|z] (pixel probabilities of the Bernoulli decoder)."""
        return torch.sigmoid(self.net.decode(z).float())

    # Evaluation draws its z samples from a fixed seed on a forked RNG, so val/test metrics
    # depend on the weights only (a reloaded checkpoint reproduces them exactly) and the
    # training RNG stream is left untouched.
    def _enter_eval_rng(self) -> None:
        self._eval_rng = contextlib.ExitStack()
        cuda = [self.device] if self.device.type == "cuda" else []
        self._eval_rng.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(EVAL_SEED)

    def _exit_eval_rng(self) -> None:
        self._eval_rng.close()

    on_validation_epoch_start = on_test_epoch_start = _enter_eval_rng
    on_validation_epoch_end = on_test_epoch_end = _exit_eval_rng

    # Each evaluation batch draws from a seed set by its number in the single-process order
    # (rank r of N evaluates batches r, r + N, ... of it: data/loaders.py), so val/test metrics
    # under DDP equal those of one process over the same split, to float tolerance.
    def seed_eval_batch(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        torch.manual_seed(EVAL_SEED + batch_idx * self.trainer.world_size + self.global_rank)

    on_validation_batch_start = on_test_batch_start = seed_eval_batch

    def setup(self, stage: str) -> None:
        # seed_everything gave every DDP rank the same seed, hence the same binarization and
        # reparameterisation noise on different images. Rank r draws from seed + r instead:
        # distinct streams, still reproducible from the seed (rank 0 = a single process).
        if stage == "fit" and (seed := os.environ.get("PL_GLOBAL_SEED")) is not None:
            torch.manual_seed(int(seed) + self.global_rank)

    def configure_model(self) -> None:
        # Called by fit/validate/test and by load_from_checkpoint, so reloaded models match.
        if self.hparams.channels_last:
            # Weights in NHWC make every conv pick the NHWC kernels (inputs have 1 channel,
            # for which both layouts are the same memory). In place: parameters keep identity.
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            self.net.compile()  # in place: parameter names, hence checkpoints, stay the same

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, _ = batch
        out = self.net(images)
        terms = elbo_terms(out.logits, images, out.mu, out.logvar, self.hparams.beta)
        if stage == "train":
            # Per-step values of this rank; no device sync until the logger flushes.
            values = {f"train/{k}": value.detach() for k, value in terms._asdict().items()}
            self.last_train_values = values  # logged or not (the NaN guard names the culprit)
            if self._writes_step_logs():
                self.log_dict(values, on_step=True, on_epoch=False, batch_size=len(images))
            return terms.loss
        for name, value in terms._asdict().items():
            metric = self.epoch_means[f"{stage}_{name}"]
            metric.update(value.detach(), len(images))
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return terms.loss

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes this training step's values to the loggers.

        It does so every ``trainer.log_every_n_steps`` optimizer steps (and when stopping);
        in between, a ``self.log`` call only does Python bookkeeping (~0.3 ms per value),
        about 1 ms per step for our four values on a 2-core CPU, where an MLP step takes
        5-10 ms. Skipping it changes nothing that is written; ``trainer.callback_metrics``
        then holds the last written step's ``train/*`` and ``last_train_values`` this step's.
        """
        trainer = self._trainer
        if trainer is None:  # a bare call outside fit: let self.log decide what to do
            return True
        every = trainer.log_every_n_steps
        return (
            bool(trainer.fast_dev_run)
            or trainer.should_stop
            or (every > 0 and (self.global_step + 1) % every == 0)
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.hparams.optimizer, params=self.parameters())
