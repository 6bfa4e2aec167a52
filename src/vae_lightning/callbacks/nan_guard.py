"""A NaN or infinite training loss stops the run cleanly, or skips its batch.

The check runs after backward and before the optimizer step, so the weights and optimizer
state are still those of the last good step: ``stop`` saves them in an emergency checkpoint,
``skip`` drops the gradients so that the step changes nothing (``torch.optim`` leaves
parameters without a gradient untouched, Adam's moments and step count included).

The decision needs the loss on the host: one device-to-host copy of a scalar per step. On
CPU it costs nothing; on a GPU it waits for the backward pass that the optimizer step would
wait for anyway. Under DDP the ranks agree (any rank non-finite) so they stay in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from pydantic import NonNegativeInt
from torch import Tensor

from vae_lightning.checkpoints import checkpoint_dir
from vae_lightning.errors import UserError
from vae_lightning.run_layout import LAST_CHECKPOINT_NAME

NanPolicy = Literal["stop", "skip"]


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or infinite (policy ``stop``)."""


class NonFiniteLossGuard(L.Callback):
    """Watches the training loss; on NaN/Inf stops the run (``stop``) or skips the batch.

    Args:
        policy: ``stop`` saves ``nonfinite_step_<step>.ckpt`` next to the other checkpoints
            and raises NonFiniteLossError (the loggers are flushed on the way out); ``skip``
            leaves the weights as they were and warns, naming the step and the terms.
        max_consecutive_skips: with ``skip``, this many non-finite batches in a row stop the
            run as ``stop`` would: the model, not the data, is broken.
    """

    def __init__(
        self, policy: NanPolicy = "stop", max_consecutive_skips: NonNegativeInt = 20
    ) -> None:
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
        self.skipped = 0
        self._consecutive = 0
        self._loss: Tensor | None = None
        self._batch_idx = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The batch of the epoch this step trains on: a Lightning batch holds
        # pl_module.steps_per_batch of them with data.steps_per_batch > 1.
        self._batch_idx = batch_idx * getattr(pl_module, "steps_per_batch", 1)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        loss, self._loss = self._loss, None
        if loss is None:
            return
        non_finite = trainer.strategy.reduce_boolean_decision(
            bool(~torch.isfinite(loss).all()), all=False
        )
        batch_idx, self._batch_idx = self._batch_idx, self._batch_idx + 1  # next: within a group
        if not non_finite:
            self._consecutive = 0
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        terms = self._describe_terms(trainer, pl_module)
        self._consecutive += 1
        if self.policy == "skip" and self._consecutive <= self.max_consecutive_skips:
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True)
            rank_zero_warn(f"Non-finite training loss at {where}: {terms}. Batch skipped.")
            return
        path = self._emergency_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        streak = (
            f" ({self._consecutive} batches in a row, over max_consecutive_skips="
            f"{self.max_consecutive_skips})"
            if self.policy == "skip"
            else ""
        )
        if (path.parent / LAST_CHECKPOINT_NAME).is_file():
            resume = f"vae-train resume={trainer.default_root_dir} <changed overrides>"
            again = f"continue from the last checkpoint with `{resume}`"
        else:
            again = "start again with changed overrides"
        raise NonFiniteLossError(
            f"Non-finite training loss at {where}{streak}: {terms}. The weights and optimizer "
            f"state from just before this step are in {path} (for inspection); the logs are "
            "flushed. Usual causes: a learning rate too high for this model (lower "
            "optimizer.lr), no gradient clipping (trainer.gradient_clip_val), half precision "
            f"overflow (trainer.precision=32-true), or a corrupt batch. Fix the cause and "
            f"{again}, or pass nan_policy=skip to skip such batches."
        )

    @staticmethod
    def _describe_terms(trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """The ``train/*`` values of this step, non-finite ones first: e.g. which of rec and
        kl blew up. VAELitModule keeps them in ``last_train_values`` on every step, also
        those it does not log (it logs every ``log_every_n_steps``)."""
        latest = getattr(pl_module, "last_train_values", None) or trainer.callback_metrics
        values = {
            name: float(value)
            for name, value in latest.items()
            if name.startswith("train/") and isinstance(value, Tensor) and value.numel() == 1
        }
        bad = {name: v for name, v in values.items() if not torch.isfinite(torch.tensor(v))}
        good = {name: v for name, v in values.items() if name not in bad}
        if not bad:
            return "loss is not finite (no non-finite train/* term was logged)"
        shown = [f"{name}={value}" for name, value in bad.items()]
        shown += [f"{name}={value:.4g}" for name, value in good.items()]
        return f"non-finite {', '.join(bad)} (" + ", ".join(shown) + ")"

    @staticmethod
    def _emergency_path(trainer: L.Trainer) -> Path:
        return checkpoint_dir(trainer) / f"nonfinite_step_{trainer.global_step:06d}.ckpt"
