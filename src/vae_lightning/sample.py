"""Entry point: ``vae-sample ckpt_path=<run dir>/checkpoints/<name>.ckpt [overrides]``.

Draws codes from the model's prior, decodes them to mean images E[x|z] and writes
``samples.png`` (a grid) and ``samples.npz`` (the codes and the images) into its own run
directory (or ``out_dir=``). A conditional model decodes every code once per class: one row
per class, the same code in every column.

``temperature`` scales each code's deviation from the prior mean, z = temperature * z for
N(0, I) (0 decodes the mean code; below 1 trades variety for typical images). For another
prior it has no single meaning, so only temperature=1 is accepted there.
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vae_lightning.config_checks import config_error
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.errors import report_user_errors
from vae_lightning.inference import ToolError, checked_checkpoint, load_module, output_dir
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.priors import StandardNormal
from vae_lightning.signatures import argument_problems
from vae_lightning.startup import freeze_imported_objects

GRID_FILE = "samples.png"
ARRAYS_FILE = "samples.npz"


def class_rows(pl_module: VAELitModule) -> int:
    """Rows of a conditional model's grid: its number of classes (1 for other models)."""
    return int(pl_module.net.num_classes) if pl_module.net.conditional else 1


@torch.no_grad()
def sample_images(
    pl_module: VAELitModule,
    num_samples: PositiveInt = 64,
    temperature: NonNegativeFloat = 1.0,
    seed: NonNegativeInt = 0,
) -> dict[str, Tensor]:
    """``num_samples`` prior codes and their mean images, float32 on the CPU.

    Returns ``codes`` (N, D) and ``images`` (N, C, H, W), row for row; for a conditional model
    each code is decoded with every class (N = classes x num_samples, class by class) and
    ``labels`` (N,) says which.
    """
    net = pl_module.net
    if temperature != 1 and not isinstance(net.prior, StandardNormal):
        raise ToolError(
            f"temperature={temperature} is defined for the standard-normal prior only (codes "
            f"scaled towards its mean 0); this model's prior is {type(net.prior).__name__}, "
            "whose draws have no single centre to scale towards. Use temperature=1 (plain "
            "prior samples)."
        )
    generator = torch.Generator().manual_seed(seed)
    codes = net.sample_prior(num_samples, generator).float() * temperature
    labels = None
    if net.conditional:
        classes = class_rows(pl_module)
        labels = torch.arange(classes).repeat_interleave(num_samples)
        codes = codes.repeat(classes, 1)
    dtype = next(pl_module.parameters()).dtype
    images = pl_module.decode_mean(codes.to(pl_module.device, dtype), labels)
    arrays = {"codes": codes, "images": images.float().cpu()}
    if labels is not None:
        arrays["labels"] = labels
    return arrays


def save_samples(arrays: dict[str, Tensor], columns: int, folder: Path) -> tuple[Path, Path]:
    """The grid (pixel values clamped to [0, 1]) and the arrays, in ``folder``."""
    grid = make_grid(arrays["images"].clamp(0, 1), nrow=columns)
    save_image(grid, folder / GRID_FILE)
    np.savez(folder / ARRAYS_FILE, **{name: value.numpy() for name, value in arrays.items()})
    return folder / GRID_FILE, folder / ARRAYS_FILE


def sample(cfg: DictConfig) -> dict[str, Tensor]:
    """Sample ``cfg.ckpt_path`` as configured; write and return the arrays."""
    ckpt_path = checked_checkpoint(cfg.get("ckpt_path"), "vae-sample")
    settings = {key: cfg[key] for key in ("num_samples", "temperature", "seed")}
    if problems := argument_problems(sample_images, settings):
        raise config_error(
            [f"{p.parameter}={p.value!r} is invalid: {p.reason}." for p in problems],
            "Fix the override(s), e.g. vae-sample ckpt_path=... num_samples=64 temperature=1.",
        )
    folder = output_dir(cfg)
    pl_module = load_module(ckpt_path)
    arrays = sample_images(pl_module, **settings)
    # A conditional grid: one row per class; otherwise as square as the count allows.
    columns = cfg.num_samples if pl_module.net.conditional else math.ceil(cfg.num_samples**0.5)
    grid, npz = save_samples(arrays, columns, folder)
    print(f"{len(arrays['images'])} samples (temperature {cfg.temperature}): {grid} and {npz}")
    return arrays


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
@report_user_errors("vae-sample")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
