"""Checkpoint files that are either complete or absent, and a loader with clear errors.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction, which for local paths
stages the file in the system temp folder and then *moves* it into place. When the temp
folder is on another filesystem (``/tmp`` on local disk, runs on a network drive: the usual
cluster set-up) the move is a copy that writes the destination in place, so a job killed
during that copy leaves a truncated ``last.ckpt`` where the good one was. Here the file is
written next to its destination, flushed to disk, and renamed over it: a rename within one
folder is atomic, so readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_lightning.errors import UserError
from vae_lightning.run_layout import RunLayout

# Keys every Lightning training checkpoint has; a file without them is something else.
TRAINING_KEYS = ("state_dict", "global_step", "epoch", "loops")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a training checkpoint."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the destination folder, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes it 0600; a plain open would not
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes (see the module docstring).

    Remote paths (``s3://``, ...) keep Lightning's own handling: object stores publish an
    upload only once it is complete.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True``, or a CheckpointError.

    The error says what is wrong with the file and what to do, instead of torch's
    ``PytorchStreamReader failed reading zip archive``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist{_others_hint(path)}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(err).__name__}: {str(err).strip()[:200]}): "
            f"the file is truncated or corrupt ({path.stat().st_size} bytes), e.g. copied "
            f"while it was being written. Use another checkpoint{_others_hint(path)}"
        ) from err
    missing = [
        key for key in TRAINING_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint
    ]
    if missing:
        raise CheckpointError(
            f"{path} is not a Lightning training checkpoint (no {', '.join(missing)}). Pass a "
            "file written by vae-train (checkpoints/last.ckpt or epoch_XXX.ckpt)."
        )
    return checkpoint


def _others_hint(path: Path) -> str:
    others = (
        sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        if path.parent.is_dir()
        else []
    )
    if not others:
        return "."
    return f"; this folder also holds: {', '.join(others)}."


def checkpoint_dir(trainer: Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else <root>/checkpoints."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath)
    return RunLayout(trainer.default_root_dir).checkpoint_dir


class RunDirCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose bookkeeping follows the run dir when it moves.

    ModelCheckpoint stores absolute paths (its folder, the best and last files). A run dir
    moved or copied (scratch to home, then ``vae-train resume=<new place>``) comes back with a
    new folder, and Lightning then drops the bookkeeping but keeps the old ``best_model_path``:
    new progress went to ``last-v1.ckpt`` while ``last.ckpt`` stayed behind (a second resume
    went back in time), and the test phase looked for the best checkpoint at the old place.
    Paths under the saved folder are re-rooted under the current one before Lightning loads
    them, so the run continues as if it had never moved.
    """

    _state_key: str | None = None

    @property
    def state_key(self) -> str:
        # The state is ModelCheckpoint's, stored under its name, so runs saved by plain
        # ModelCheckpoint (vae-lightning 0.1) resume with their bookkeeping, and vice versa.
        # Built once: its parts are fixed in __init__, and Lightning asks for it on every
        # hook it calls (six times a training step), each time building a dict's repr.
        if self._state_key is None:
            self._state_key = super().state_key.replace(
                type(self).__qualname__, "ModelCheckpoint", 1
            )
        return self._state_key

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:
            state_dict = rerooted_state(state_dict, Path(saved), Path(self.dirpath))
        super().load_state_dict(state_dict)


def rerooted_state(state: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """ModelCheckpoint's state with every path under ``old`` moved under ``new``."""

    def move(path: Any) -> Any:
        if not path:
            return path
        try:
            return str(new / Path(path).relative_to(old))
        except ValueError:  # not under the old folder: leave it as it is
            return path

    moved = dict(state, dirpath=str(new))
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in moved:
            moved[key] = move(moved[key])
    if moved.get("best_k_models"):
        moved["best_k_models"] = {
            move(path): score for path, score in moved["best_k_models"].items()
        }
    return moved
