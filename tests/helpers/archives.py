"""Small generated datasets in the archive formats: CIFAR-10's python tarball (or its
extracted folder) and DeepMind's dSprites .npz."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from vae_lightning.data.cifar import BATCHES_FOLDER, SPLIT_BATCHES
from vae_lightning.data.dsprites import FACTOR_SIZES, factor_classes, factor_values, render

# One colour per label (RGB), no two alike and none grey, so a swapped or lost channel shows.
LABEL_COLOURS = np.array(
    [
        [230, 25, 25],
        [25, 200, 40],
        [30, 40, 220],
        [240, 200, 20],
        [200, 30, 200],
        [20, 200, 210],
        [250, 130, 20],
        [120, 60, 10],
        [130, 130, 250],
        [10, 90, 60],
    ],
    dtype=np.uint8,
)


def make_colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3, 32, 32) uint8 images: the label's colour with a black square whose
    column is the label (so a left-right flip shows), and labels 0-9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count)
    images = np.broadcast_to(LABEL_COLOURS[labels][:, :, None, None], (count, 3, 32, 32)).copy()
    for image, label in zip(images, labels, strict=True):
        image[:, 8:14, 2 + 2 * int(label) : 6 + 2 * int(label)] = 0
    return images, labels


def batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """A batch pickled as the real ones are: a dict of bytes keys, rows of 3072 bytes (the
    red plane, then green, then blue, each row by row), labels as a list."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def cifar_batches(per_batch: int, n_test: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (images, labels) of each batch file, generated."""
    names = [*SPLIT_BATCHES["train"], *SPLIT_BATCHES["test"]]
    return {
        name: make_colour_images(n_test if name == "test_batch" else per_batch, seed=i)
        for i, name in enumerate(names)
    }


def write_cifar10(
    folder: Path, per_batch: int = 60, n_test: int = 100, extracted: bool = False
) -> Path:
    """A tiny CIFAR-10 in ``folder``: cifar-10-python.tar.gz (members under
    cifar-10-batches-py/, as the real one) or, with ``extracted``, that folder itself.
    5 training batches of ``per_batch`` images and a test batch of ``n_test``."""
    files = {
        name: batch_bytes(*arrays, name)
        for name, arrays in cifar_batches(per_batch, n_test).items()
    }
    files["batches.meta"] = pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2)
    folder.mkdir(parents=True, exist_ok=True)
    if extracted:
        (folder / BATCHES_FOLDER).mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / BATCHES_FOLDER / name).write_bytes(data)
        return folder / BATCHES_FOLDER
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"{BATCHES_FOLDER}/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return archive


def cifar10_data(root: Path) -> list[str]:
    """Overrides that train on the generated CIFAR-10 in root: 200 training and 100
    validation images from its 300, its 100 test images, no download, no checksum."""
    return [
        "data=cifar10",
        f"data.root={root}",
        "data.download=false",
        "data.verify_checksums=false",
        "data.val_size=100",
    ]


def write_dsprites_npz(path: Path, indices: np.ndarray) -> Path:
    """DeepMind's keys for the images of ``indices`` (drawn by our generator, pixels 0/1)."""
    import torch

    classes = factor_classes(torch.as_tensor(indices))
    images = (render(classes)[:, 0] // 255).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        imgs=images,
        latents_classes=classes.numpy(),
        latents_values=factor_values(classes).numpy(),
        metadata=np.array({"latents_sizes": np.array(FACTOR_SIZES)}, dtype=object),
    )
    return path
