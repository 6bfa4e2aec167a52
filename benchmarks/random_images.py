"""Random uint8 images of any shape (CIFAR-10's 3x32x32 by default) for benchmarks/throughput.py.

Timing a model on CIFAR-shaped data needs no CIFAR files: the cost of an epoch depends on
the image shape and count, not on the pixels. The data module is the project's own
(``MNISTDataModule``: same loaders, device placement and binarization on the device) with
the IDX files replaced by seeded random tensors, so vae-train (paths b, c) does exactly the
work it does on real data, and the pure loop (path a) gets the same images from
``random_uint8_images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vae_lightning.data import MNISTDataModule

CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_TRAIN_IMAGES = 50_000
TEST_IMAGES = 1000  # the test split is not timed; a few batches keep setup short


def random_uint8_images(count: int, image_shape: Sequence[int], seed: int) -> Tensor:
    """``count`` seeded uniform uint8 images, (count, *image_shape)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *image_shape), dtype=torch.uint8, generator=generator)


class RandomImagesDataModule(MNISTDataModule):
    """``num_images`` training images (plus ``val_size`` carved off as usual) and a small test
    split, random uint8 of ``image_shape``; nothing is read or downloaded."""

    def __init__(
        self, num_images: int = CIFAR10_TRAIN_IMAGES, data_seed: int = 0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("image_shape", CIFAR10_SHAPE)
        super().__init__(**kwargs)
        self.num_images, self.data_seed = num_images, data_seed

    def prepare_data(self) -> None:
        """Nothing to download."""

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        count = self.num_images + self.val_size if split == "train" else TEST_IMAGES
        seed = self.data_seed + (split == "test")
        images = random_uint8_images(count, self.image_shape, seed)
        return images, torch.randint(
            0, 10, (count,), generator=torch.Generator().manual_seed(seed)
        )
