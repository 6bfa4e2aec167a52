"""Small generated image folders in real file formats (PNG, JPEG, WebP via Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra import initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from helpers.paths import CONF_DIR
from helpers.runs import TrainedRun, output_overrides
from vae_lightning.configs import compose_as_launched
from vae_lightning.train import train

FORMATS = ("png", "jpg", "webp")


def pattern(label: int, size: tuple[int, int], seed: int, channels: int = 3) -> np.ndarray:
    """An (H, W[, 3]) uint8 image: noise plus a bright bar whose row depends on the label."""
    width, height = size
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels == 3 else (height, width)
    pixels = rng.integers(0, 60, size=shape).astype(np.uint8)
    row = (2 + 3 * label) * height // 32
    pixels[row : row + max(1, height // 10), width // 8 : width - width // 8] = 220
    return pixels


def save(path: Path, pixels: np.ndarray, lossless: bool = True) -> Path:
    """Write pixels in the format of path's suffix (WebP losslessly unless told not to)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"lossless": True} if path.suffix == ".webp" and lossless else {}
    Image.fromarray(pixels).save(path, **options)
    return path


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 12,
    size: tuple[int, int] = (16, 16),
    seed: int = 0,
) -> Path:
    """``root/<class>/<n>.<png|jpg|webp>``, the formats taking turns."""
    for label, name in enumerate(classes):
        for n in range(per_class):
            suffix = FORMATS[n % len(FORMATS)]
            pixels = pattern(label, size, seed=seed * 1000 + label * 100 + n)
            save(root / name / f"{n:03d}.{suffix}", pixels)
    return root


def write_truncated(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    """A PNG cut off in the middle of its data (as an interrupted copy leaves it)."""
    save(path, pattern(0, size, seed=99))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt(path: Path) -> Path:
    """A file with an image suffix whose bytes are no image at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a JPEG" * 20)
    return path


def image_folder_data(root: Path, *extra: str) -> list[str]:
    """Overrides that train on the image folder at root: 16x16 RGB, grey levels, a Gaussian
    likelihood (the decoder emits 3 channels)."""
    return [
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=16",
        "data.channels=3",
        "data.binarize=none",
        "likelihood=gaussian",
        "data.eval_batch_size=8",
        "data.batch_size=8",
        *extra,
    ]


def write_celeba(root: Path, count: int = 12, size: tuple[int, int] = (178, 218)) -> Path:
    """A tiny CelebA in torchvision's layout: root/celeba/img_align_celeba/NNNNNN.jpg and
    root/celeba/list_eval_partition.txt (the first half train, then valid, then test)."""
    folder = root / "celeba" / "img_align_celeba"
    lines = []
    for n in range(1, count + 1):
        name = f"{n:06d}.jpg"
        save(folder / name, pattern(n % 3, size, seed=n))
        partition = 0 if n <= count // 2 else 1 if n <= 3 * count // 4 else 2
        lines.append(f"{name} {partition}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def folder_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed as vae-train composes it, outputs in run_dir; unlike
    helpers.runs.compose_config no IDX data overrides are added (the data is in overrides)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose_as_launched("train", [*output_overrides(run_dir), *overrides])


def folder_train_run(run_dir: Path, overrides: list[str]) -> TrainedRun:
    """Train in-process with the real configs and train() (see folder_config)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched("train", [*output_overrides(run_dir), *overrides])
        metrics = train(cfg)
    return TrainedRun(run_dir, cfg, metrics)
