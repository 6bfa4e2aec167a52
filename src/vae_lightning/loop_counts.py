"""Lightning's loop counters in a checkpoint, as one optimizer step per batch keeps them.

A checkpoint holds Lightning's loop counters, which count per batch and per optimization
mode: optimizer steps (global_step) in the tracker of the module's mode, batches of the
epoch (which decide when it ends and validates) in Lightning batches. Those of a run with
``data.steps_per_batch`` > 1 (manual optimization, groups of batches) are written as a run
with one step per batch writes them, and read back from that form, so that a run resumes
exactly with any steps_per_batch (tests/test_steps_per_batch.py).
"""

from __future__ import annotations

from typing import Any

AUTOMATIC_PROGRESS = "epoch_loop.automatic_optimization.optim_progress"
MANUAL_PROGRESS = "epoch_loop.manual_optimization.optim_step_progress"
BATCH_PROGRESS = "epoch_loop.batch_progress"


def _set_counts(progress: dict[str, Any], **counts: int) -> None:
    for scope, count in counts.items():
        progress[scope] = dict.fromkeys(progress[scope], count)


def _loader_state(fit: dict[str, Any]) -> dict[str, int]:
    """The tensor loader's state: batches (of batch_size) handed out in the checkpoint's
    epoch, and per epoch; empty for a loader without that state."""
    loaders = fit.get("state_dict", {}).get("combined_loader") or [{}]
    return loaders[0]


def loop_counts_to_one_step_per_batch(loops: dict[str, Any]) -> None:
    """A grouped run's counters in a checkpoint, as one step per batch keeps them."""
    fit = loops["fit_loop"]
    steps = fit[MANUAL_PROGRESS]["total"]["completed"]
    batches = _loader_state(fit).get("batches_yielded")
    epoch_steps = steps if batches is None else batches
    for tracker in fit[AUTOMATIC_PROGRESS]["optimizer"].values():  # step and zero_grad
        _set_counts(tracker, total=steps, current=epoch_steps)
    _set_counts(fit[MANUAL_PROGRESS], total=0, current=0)
    if batches is not None:
        _set_counts(fit[BATCH_PROGRESS], total=steps, current=batches)


def loop_counts_to_groups(loops: dict[str, Any], steps_per_batch: int) -> None:
    """The inverse, as a run with ``steps_per_batch`` resumes from a checkpoint."""
    fit = loops["fit_loop"]
    steps = fit[AUTOMATIC_PROGRESS]["optimizer"]["step"]["total"]["completed"]
    _set_counts(fit[MANUAL_PROGRESS], total=steps, current=steps)
    loader = _loader_state(fit)
    if "batches_per_epoch" in loader:
        # The groups the epoch has minus those its remaining batches make: Lightning ends
        # the epoch (and validates) when its count reaches the loader's length.
        done, total = loader["batches_yielded"], loader["batches_per_epoch"]
        groups = -(-total // steps_per_batch) - -(-(total - done) // steps_per_batch)
        _set_counts(fit[BATCH_PROGRESS], total=-(-steps // steps_per_batch), current=groups)
