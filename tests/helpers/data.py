"""Small generated datasets in the real file formats (IDX, gzipped or not)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from vae_lightning.data.registry import MNIST_FORMAT_FILES


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def make_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images with class-dependent structure (a bright bar whose position is the label)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row = 2 + 2 * int(label)
        image[row : row + 3, 4:24] = 230
    return images, labels


def write_split(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool
) -> None:
    suffix = ".gz" if gz else ""
    image_name, label_name = MNIST_FORMAT_FILES[split]
    write_idx(folder / f"{image_name}{suffix}", images)
    write_idx(folder / f"{label_name}{suffix}", labels)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    write_split(folder, "train", *make_digits(n_train, seed=1), gz=gz)
    write_split(folder, "test", *make_digits(n_test, seed=2), gz=gz)
    return folder


def idx_data(root: Path) -> list[str]:
    """Overrides that train on the IDX files in root (see ``write_dataset``), never downloading:
    500 training and 100 validation images from its 600, and its 200 test images."""
    return [f"data.root={root}", "data.download=false", "data.val_size=100"]
