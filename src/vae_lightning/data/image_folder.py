"""Any folder of PNG/JPEG/WebP images as a data module, decoded once into the uint8 cache.

Labels: an image in a sub-folder gets the label of that (top-level) sub-folder's name, in
sorted order of the names; images lying directly in the folder form the class ``"."``, so an
unlabelled folder is one class, label 0.

Splits (``split``): ``random`` orders the images by a hash of ``split_seed`` and their
relative path and takes the first ``val_fraction`` as validation, the next ``test_fraction``
as test, the rest for training: deterministic, independent of the file system's order, and
adding images moves few others between splits. ``folders`` uses the top-level folders
``train/``, ``val/`` and ``test/`` as the splits (labels then come from the folders below).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from vae_lightning.data.datamodule import Binarize, TensorImageDataModule
from vae_lightning.data.decode_cache import (
    DecodedImages,
    OnBadImage,
    choose_cache_dir,
    decoded_images,
)
from vae_lightning.data.image_files import (
    IMAGE_SUFFIXES,
    DecodeSettings,
    ImageFile,
    ImageFolderError,
    scan_images,
)
from vae_lightning.errors import ConfigError
from vae_lightning.param_types import ImageShape, Seed

Fraction = Annotated[float, Field(ge=0, lt=1)]
SPLITS = ("train", "val", "test")
ROOT_CLASS = "."  # the class of images lying directly in the folder


class MappedImages:
    """The rows ``rows`` of a memory-mapped uint8 array, read only when a batch asks.

    Stands in for a split's image tensor where the loaders use one (``len``, indexing,
    ``index_select``, ``.to``, ``device``) so a split larger than memory is never copied as a
    whole.
    """

    def __init__(self, array: Tensor, rows: Tensor) -> None:
        self.array, self.rows = array, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Tensor:
        return self.array[self.rows[index]]

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """The rows ``index`` (``dim`` 0), as the tensor loader gathers a batch."""
        if dim != 0:
            raise ValueError(f"MappedImages gathers whole images (dim 0), not along dim {dim}.")
        return self.array.index_select(0, self.rows.index_select(0, index))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.array.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.array.dtype

    @property
    def device(self) -> torch.device:
        return self.array.device

    def to(self, device: torch.device | str) -> MappedImages:
        """Stays mapped in host memory: batches are gathered there and moved by Lightning."""
        return self


def class_of(relative: str) -> str:
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else ROOT_CLASS


def random_split_order(relatives: Sequence[str], split_seed: int) -> list[int]:
    """Indices of ``relatives`` ordered by a seeded hash of each path."""

    def key(index: int) -> bytes:
        return hashlib.sha256(f"{split_seed}:{relatives[index]}".encode()).digest()

    return sorted(range(len(relatives)), key=key)


def split_tensors(
    decoded: DecodedImages, labels: Sequence[int], rows_of: dict[str, list[int]]
) -> dict[str, tuple[Tensor, Tensor]]:
    """Images and labels of each split from the decoded rows; a memory-mapped training
    split stays mapped (:class:`MappedImages`), everything else is in memory: a split of
    consecutive rows (CelebA's official partitions) as a view of the loaded array, so the
    images are not held twice, any other as a copy."""
    all_labels = torch.as_tensor(labels, dtype=torch.long)
    splits = {}
    for name, rows in rows_of.items():
        ordered = sorted(rows)
        index = torch.as_tensor(ordered, dtype=torch.long)
        consecutive = ordered == list(range(ordered[0], ordered[-1] + 1)) if ordered else False
        if decoded.mapped and name == "train":
            images: Any = MappedImages(decoded.images, index)
        elif consecutive and not decoded.mapped:
            images = decoded.images[ordered[0] : ordered[-1] + 1]
        else:
            images = decoded.images[index]
        splits[name] = (images, all_labels[index])
    return splits


class DecodedImagesDataModule(TensorImageDataModule):
    """Shared by data modules whose images are files decoded into the cache
    (data/decode_cache.py): the cache options and the step from decoded rows to splits."""

    def __init__(
        self,
        dataset: str,
        root: str,
        settings: DecodeSettings,
        *,
        on_bad_image: OnBadImage,
        cache_dir: str | None,
        max_memory_gb: float,
        decode_workers: int | None,
        binarize: Binarize,
        image_shape: ImageShape,
        **options: Any,
    ) -> None:
        super().__init__(dataset, binarize=binarize, image_shape=image_shape, **options)
        if tuple(image_shape) != settings.shape:
            raise ConfigError(
                f"data.image_shape={list(image_shape)} does not match the decoded images "
                f"{list(settings.shape)} (data.channels, data.image_size, data.image_size); "
                "leave data.image_shape to its interpolation or set it to match."
            )
        self.root, self.settings = Path(root), settings
        self.on_bad_image, self.cache_dir = on_bad_image, cache_dir
        self.max_memory_gb, self.decode_workers = max_memory_gb, decode_workers
        self.decoded: DecodedImages | None = None

    def image_files(self) -> list[ImageFile]:
        """The files to decode, in a fixed order."""
        raise NotImplementedError

    @property
    def image_root(self) -> Path:
        """The folder the files of :meth:`image_files` are relative to."""
        return self.root

    def decode(self) -> tuple[list[ImageFile], DecodedImages]:
        """The files and their decoded rows (from the cache, built when missing)."""
        files = self.image_files()
        if self.decoded is None:
            root = self.image_root
            self.decoded = decoded_images(
                root,
                files,
                self.settings,
                cache_dir=choose_cache_dir(root, self.cache_dir),
                on_bad_image=self.on_bad_image,
                max_memory_gb=self.max_memory_gb,
                workers=self.decode_workers,
            )
        return files, self.decoded

    def prepare_data(self) -> None:
        """Build the decode cache once (rank 0, as Lightning calls it); ranks load it."""
        if not self.splits:
            self.decode()

    def mapped_splits(
        self, decoded: DecodedImages, labels: Sequence[int], rows_of: dict[str, list[int]]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        for name, rows in rows_of.items():
            if not rows:
                raise ConfigError(self.empty_split_message(name, len(decoded.kept)))
        if decoded.mapped and self.binarize == "static":
            raise ConfigError(
                f"{self.root} holds more than data.max_memory_gb={self.max_memory_gb} GiB of "
                "decoded images, so its training split is memory-mapped, and "
                "data.binarize=static would copy it into memory as a whole. Use "
                "data.binarize=dynamic or none, or raise data.max_memory_gb."
            )
        if decoded.mapped:
            rank_zero_info(
                f"The decoded images of {self.root} exceed data.max_memory_gb="
                f"{self.max_memory_gb} GiB: the training split is memory-mapped from "
                f"{decoded.entry}."
            )
        splits = split_tensors(decoded, labels, rows_of)
        if not decoded.mapped:
            # Drop this reference to the loaded array (a [:0] view would keep all of it alive):
            # it is freed unless some split is a view of it.
            decoded.images = decoded.images.new_empty((0, *decoded.images.shape[1:]))
        return splits

    def empty_split_message(self, split: str, count: int) -> str:
        return f"The {split} split of {self.root} is empty ({count} images in all)."


class ImageFolderDataModule(DecodedImagesDataModule):
    """Images of any folder tree (PNG, JPEG, WebP), decoded once into a uint8 cache.

    See the module docstring for labels and splits, data/decode_cache.py for the cache and
    data/image_files.py for the decoding (``channels``, ``image_size``, ``resize``, ``crop``).
    """

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 64,
        channels: Literal[1, 3] = 3,
        resize: bool = True,
        crop: PositiveInt | None = None,
        split: Literal["random", "folders"] = "random",
        val_fraction: Fraction = 0.1,
        test_fraction: Fraction = 0.1,
        on_bad_image: OnBadImage = "fail",
        cache_dir: str | None = None,
        max_memory_gb: PositiveFloat = 8.0,
        decode_workers: PositiveInt | None = None,
        dataset: str = "image_folder",
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = "dynamic",
        loader: Literal["tensor", "torch"] = "tensor",
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 42,
        transform: Any = None,
        image_shape: ImageShape = (3, 64, 64),
        hflip: bool = False,
        num_classes: NonNegativeInt | None = None,
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__(
            dataset,
            root,
            DecodeSettings(image_size, channels, resize, crop),
            num_classes=num_classes,
            on_bad_image=on_bad_image,
            cache_dir=cache_dir,
            max_memory_gb=max_memory_gb,
            decode_workers=decode_workers,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            binarize=binarize,
            loader=loader,
            num_workers=num_workers,
            seed=seed,
            split_seed=split_seed,
            transform=transform,
            image_shape=image_shape,
            hflip=hflip,
            steps_per_batch=steps_per_batch,
        )
        if split == "random" and val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction} "
                "leaves no images for training; keep their sum below 1."
            )
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.class_names: list[str] = []
        self._files: list[ImageFile] | None = None

    def image_files(self) -> list[ImageFile]:
        if self._files is None:
            self._files = self.scan()
        return self._files

    def scan(self) -> list[ImageFile]:
        if not self.root.is_dir():
            raise ImageFolderError(
                f"data.root={self.root} is not a folder. Point data.root at a folder of "
                "PNG/JPEG/WebP images (searched recursively; sub-folder names become labels)."
            )
        files = scan_images(self.root)
        if self.split == "folders":
            files = [image for image in files if image.relative.split("/")[0] in SPLITS]
        if not files:
            others = sum(len(names) for _, _, names in os.walk(self.root))
            where = (
                f"{self.root}/{{train,val,test}}/ (data.split=folders)"
                if self.split == "folders"
                else str(self.root)
            )
            raise ImageFolderError(
                f"No images found in {where}: {others} file(s), none of them "
                f"{'/'.join(sorted(IMAGE_SUFFIXES))}. Point data.root at the folder that "
                "holds the images (sub-folders are searched)."
            )
        return files

    def empty_split_message(self, split: str, count: int) -> str:
        if self.split == "folders":
            return (
                f"{self.root}/{split}/ holds no images (data.split=folders needs images in "
                "train/, val/ and test/). Add them, or use data.split=random to carve the "
                "splits with data.val_fraction and data.test_fraction."
            )
        fraction = self.val_fraction if split == "val" else self.test_fraction
        return (
            f"The {split} split of {self.root} is empty: {count} images with "
            f"data.{split}_fraction={fraction}. Raise the fraction or add images."
        )

    def read_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        files, decoded = self.decode()
        relatives = [files[i].relative for i in decoded.kept]
        if self.split == "folders":
            split_of = [relative.split("/", 1)[0] for relative in relatives]
            within = [relative.split("/", 1)[1] for relative in relatives]
            rows_of = {name: [r for r, s in enumerate(split_of) if s == name] for name in SPLITS}
            self.sources = {name: self.root / name for name in SPLITS}
        else:
            within = relatives
            order = random_split_order(relatives, self.split_seed)
            n_val = round(self.val_fraction * len(order))
            n_test = round(self.test_fraction * len(order))
            rows_of = {
                "train": order[n_val + n_test :],
                "val": order[:n_val],
                "test": order[n_val : n_val + n_test],
            }
            self.sources = dict.fromkeys(SPLITS, self.root)
        classes = [class_of(relative) for relative in within]
        self.class_names = sorted(set(classes))
        label_of = {name: label for label, name in enumerate(self.class_names)}
        labels = [label_of[name] for name in classes]
        splits = self.mapped_splits(decoded, labels, rows_of)
        sizes = ", ".join(f"{name} {len(images)}" for name, (images, _) in splits.items())
        rank_zero_info(
            f"Image folder {self.root}: {len(relatives)} images ({sizes}), "
            f"{len(self.class_names)} class(es), decoded to {list(self.settings.shape)}."
        )
        return splits
