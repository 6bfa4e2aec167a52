"""What the inference tools (vae-sample, vae-embed, vae-export) share: the checkpoint they
read, the folder they write and the errors they report.

Each tool takes ``ckpt_path=`` like vae-eval, checks the file with
:func:`checkpoints.load_checkpoint` (a missing, truncated or foreign file is one clear
paragraph) and writes into its own Hydra run dir under ``outputs/``, or into ``out_dir=``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vae_lightning.checkpoints import load_checkpoint
from vae_lightning.errors import UserError
from vae_lightning.lit_module import VAELitModule


class ToolError(UserError, ValueError):
    """A bad invocation of an inference tool; the message says what to do."""


def checked_checkpoint(ckpt_path: str | None, prog: str) -> Path:
    """``ckpt_path`` as a Path, once it is known to be a readable training checkpoint."""
    if not ckpt_path:
        raise ToolError(
            f"{prog} needs a checkpoint: {prog} ckpt_path=<run dir>/checkpoints/<name>.ckpt "
            "(vae-train prints the best one at the end of training)."
        )
    path = Path(ckpt_path)
    load_checkpoint(path)  # missing, truncated, corrupt or not a checkpoint: CheckpointError
    return path


def load_module(ckpt_path: Path) -> VAELitModule:
    """The checkpoint's module on the CPU, in eval mode (the checkpoint holds its config)."""
    return VAELitModule.load_from_checkpoint(ckpt_path, map_location="cpu").eval()


def writable_dir(folder: str | Path, key: str = "out_dir") -> Path:
    """``folder``, created if needed, once a file could be written into it; else ToolError."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ToolError(
            f"{key}={path} cannot be written ({type(err).__name__}: {err.strerror or err}). "
            f"Choose a folder you can write to ({key}=<folder>), or leave {key} unset to "
            "write into a new run folder under outputs/."
        ) from None
    return path


def output_dir(cfg: DictConfig) -> Path:
    """Where a tool writes: ``out_dir`` when given, else its Hydra run dir."""
    return (
        writable_dir(cfg.out_dir)
        if cfg.get("out_dir")
        else writable_dir(cfg.paths.output_dir, "hydra.run.dir")
    )


def settings_of(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The named top-level settings of a tool's config, as plain values."""
    return {key: cfg[key] for key in keys}
