"""Exact resume: RNG states in every checkpoint, and a clean stop on SIGINT/SIGTERM.

Lightning restores weights, optimizer, loop counters and (through the train loader's
``state_dict``) the position inside the epoch, but not the random number generators, and by
default a SIGTERM makes it stop after the current batch *without a checkpoint and with exit
code 0*, so a scheduler sees success and the work since the last epoch is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae_lightning.checkpoints import checkpoint_dir
from vae_lightning.run_layout import LAST_CHECKPOINT_NAME
from vae_lightning.seeding import rng_states, set_rng_states

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RNGStateCheckpoint(L.Callback):
    """Saves the RNG states in every checkpoint and puts them back when training resumes.

    Under DDP each rank draws its own stream (seed + rank: seeding.seed_training_stream), so
    the states of all ranks are gathered into the checkpoint and each rank gets its own back.

    They are put back at ``on_train_start``: after the checkpoint is loaded and the train
    loader's iterator is built, before the first batch is fetched and binarized (the dynamic
    Bernoulli draw happens in ``on_after_batch_transfer``, ahead of ``on_train_batch_start``).
    Setting them earlier, when the checkpoint is loaded, would let setup code consume them.
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        states = rng_states()
        trainer = self._trainer
        if (
            trainer is not None
            and trainer.world_size > 1
            and dist.is_available()
            and dist.is_initialized()
        ):
            # Every rank dumps the checkpoint (Lightning requires save_checkpoint on all ranks);
            # rank 0's copy, written to disk, then holds every rank's states.
            per_rank: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(per_rank, states)
            return {"per_rank": per_rank}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict["per_rank"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        if len(self._to_restore) == trainer.world_size:
            set_rng_states(self._to_restore[trainer.global_rank])
        else:
            rank_zero_warn(
                f"The checkpoint holds RNG states for {len(self._to_restore)} processes, this "
                f"run has {trainer.world_size}: each rank keeps its fresh seed + rank stream, "
                "so the resumed run is not an exact continuation."
            )
        self._to_restore = None


class SaveOnInterrupt(L.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (pre-emption, time limit): finish the current training
    batch, save ``last.ckpt``, flush the loggers and exit with code 128 + signal number
    (130, 143), printing the command that resumes the run.

    ``requeue_signal`` (SIGUSR1 by default; SLURM sends it ahead of the time limit when the
    job asks for ``--signal=B:USR1@<seconds>``) stops the same way and then, inside a SLURM
    job, runs ``scontrol requeue <job>``: SLURM starts the job again, and train() resumes it
    from last.ckpt (run_dir.requeued_checkpoint). Lightning's own SLURM auto-requeue saves
    ``hpc_ckpt_<n>.ckpt`` from within the signal handler, wherever the batch is, with the RNG
    states of that moment; this saves at a batch boundary, so the resumed run is exact (see
    docs/slurm-preemption.md). Exit code 128 + 10 (138).

    Lightning's own SIGTERM flag is what stops the loop, at the point where its counters are
    consistent (after a batch, or after an epoch); a signal that arrives during validation
    is held back until validation ends, because Lightning would otherwise stop halfway
    through it and the checkpoint would lose the partial validation means. A second
    Ctrl-C stops at once, without saving (the previous checkpoints are left as they were).
    """

    def __init__(self, run_dir: str | None = None, requeue_signal: str | None = "SIGUSR1") -> None:
        self.run_dir = run_dir
        self.requeue_signal = signal.Signals[requeue_signal] if requeue_signal else None
        self._received: signal.Signals | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._lightning_handler: Any = None
        self._validating = False
        self._held_back = False
        self._start_step: int | None = None  # set while the fit loop runs

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._received, self._validating, self._held_back = None, False, False
        # Lightning installed its SIGTERM handler just before the fit loop started.
        self._lightning_handler = signal.getsignal(signal.SIGTERM)
        try:
            for signum in self._handled_signals():
                self._previous_handlers[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread: signals cannot be handled here
            rank_zero_warn("SaveOnInterrupt: not in the main thread, signals are not handled.")

    def _handled_signals(self) -> tuple[signal.Signals, ...]:
        extra = () if self.requeue_signal is None else (self.requeue_signal,)
        return (*INTERRUPT_SIGNALS, *extra)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            return
        self._received = signal.Signals(signum)
        rank_zero_info(
            f"\nReceived {self._received.name}: finishing the current batch, then saving "
            "last.ckpt (Ctrl-C again stops at once without saving)."
        )
        if self._validating:
            self._held_back = True
        else:
            self._stop_after_this_batch(frame)

    def _stop_after_this_batch(self, frame: FrameType | None) -> None:
        if callable(self._lightning_handler):
            self._lightning_handler(signal.SIGTERM, frame)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating = False
        if self._held_back:
            self._held_back = False
            self._stop_after_this_batch(None)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        self._start_step = None

    # --------------------------------------------------------------- the stop
    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        return checkpoint_dir(trainer) / LAST_CHECKPOINT_NAME

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        path = self.checkpoint_path(trainer)
        run_dir = self.run_dir or trainer.default_root_dir
        resume = f"vae-train resume={run_dir}"
        if isinstance(exception, KeyboardInterrupt):
            kept = f"{path} is unchanged" if path.is_file() else "no checkpoint was saved"
            rank_zero_info(f"Stopped at once without saving; {kept}. Resume with: {resume}")
            return
        if not isinstance(exception, SIGTERMException):
            return
        received = self._received or signal.SIGTERM
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        if self._start_step is None:  # before training (sanity check) or after it (test)
            saved = f"Training was not running; {path} is left as it was."
        elif trainer.global_step == self._start_step:
            saved = f"No training step since the start; {path} is left as it was."
        else:
            trainer.save_checkpoint(path, weights_only=False)
            saved = f"Saved {path} at {where}; the logs are flushed."
        if received == self.requeue_signal and os.environ.get("SLURM_JOB_ID"):
            rank_zero_info(f"Interrupted by {received.name}. {saved}")
            requeue_slurm_job(trainer)
        else:
            rank_zero_info(f"Interrupted by {received.name}. {saved} Resume with:\n  {resume}")
        # SIGTERMException is a SystemExit with code None (exit status 0). Lightning
        # re-raises this same object, so its code becomes the process's exit status:
        # 128 + signal number, the shell's convention, so schedulers see the interruption.
        exception.code = 128 + int(received)


def requeue_slurm_job(trainer: L.Trainer) -> None:
    """Ask SLURM to requeue this job (rank 0; the other ranks belong to the same job).

    The requeue makes SLURM send SIGTERM to the job's processes: it is ignored from here on,
    so that the loggers are still flushed (last.ckpt is already complete), and the process
    exits before SLURM's SIGKILL (KillWait seconds later).
    """
    if not trainer.is_global_zero:
        return
    array_job, array_task = (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    )
    job = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        answer = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        answer = subprocess.CompletedProcess([], 1, "", str(err))
    if answer.returncode == 0:
        rank_zero_info(f"Requeued SLURM job {job}: it resumes from last.ckpt when it restarts.")
    else:
        rank_zero_warn(
            f"scontrol requeue {job} failed ({answer.stderr.strip()}): last.ckpt is saved; "
            "resume with `vae-train resume=<run dir>` or submit the job again."
        )
