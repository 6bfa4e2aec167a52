"""CIFAR-10 from torchvision's python archive (``cifar-10-python.tar.gz``) or its extracted
``cifar-10-batches-py/`` folder, checked against the MD5s torchvision publishes.

The batches are Python pickles. They are read with an unpickler that builds only what the
real files hold (NumPy arrays, lists, bytes and strings), so a file that is not what it
claims to be is refused instead of run.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor

from vae_lightning.data.checksums import md5_of
from vae_lightning.data.datamodule import Binarize, MNISTDataModule
from vae_lightning.data.idx import DataFileError
from vae_lightning.data.registry import ArchiveStorage, DatasetInfo
from vae_lightning.param_types import ImageShape, Seed

BATCHES_FOLDER = "cifar-10-batches-py"
SPLIT_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
IMAGE_SHAPE = (3, 32, 32)

# What the real batches' pickles refer to: NumPy's array reconstruction (both module names
# NumPy has used) and the codec protocol 2 uses for bytes. Nothing else may be imported.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def published_md5() -> dict[str, str]:
    """File name -> MD5 that torchvision's CIFAR10 publishes: the archive and each batch."""
    from torchvision.datasets import CIFAR10

    return {CIFAR10.filename: CIFAR10.tgz_md5, **dict(CIFAR10.train_list + CIFAR10.test_list)}


def decode_batch(raw: bytes, name: str) -> tuple[Tensor, Tensor]:
    """One pickled batch -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        images = np.asarray(data, dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as err:  # any fault of a damaged or foreign file
        raise DataFileError(
            f"{name} is not a CIFAR-10 python batch ({type(err).__name__}: {err}). Replace the "
            "archive with the original cifar-10-python.tar.gz."
        ) from err
    if len(images) != len(labels) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataFileError(
            f"{name} holds {len(images)} images and {len(labels)} labels (labels must be "
            "0-9, one per image): the batch is damaged. Replace the archive."
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def archive_members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """``(member name without folder, bytes)`` of each batch file in the tarball."""
    wanted = {name for names in SPLIT_BATCHES.values() for name in names}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    yield name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataFileError(
            f"{archive} cannot be read as a .tar.gz ({err}): it is truncated or corrupt. "
            "Delete it and download it again."
        ) from err


def read_cifar10(source: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Both official splits from the archive or the extracted folder: "train" (50,000 images
    of data_batch_1..5, in order) and "test" (10,000 of test_batch)."""
    if source.is_dir():
        batches = {
            name: (source / name).read_bytes()
            for names in SPLIT_BATCHES.values()
            for name in names
            if (source / name).is_file()
        }
    else:
        batches = dict(archive_members(source))
    splits = {}
    for split, names in SPLIT_BATCHES.items():
        missing = [name for name in names if name not in batches]
        if missing:
            raise DataFileError(
                f"{source} lacks {', '.join(missing)} (expected {BATCHES_FOLDER}/"
                f"{', '.join(names)}): it is incomplete. Replace it with the original archive."
            )
        decoded = [decode_batch(batches[name], f"{source}: {name}") for name in names]
        splits[split] = (
            torch.cat([images for images, _ in decoded]),
            torch.cat([labels for _, labels in decoded]),
        )
    return splits


def find_cifar10(folders: list[Path], file_name: str) -> Path | None:
    """The extracted batches folder (read faster) or else the archive, first folder first."""
    for folder in folders:
        for candidate in (folder / BATCHES_FOLDER, folder):
            if (candidate / SPLIT_BATCHES["test"][0]).is_file():
                return candidate
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def checksum_problems(source: Path) -> list[str]:
    """How ``source`` differs from the published files (empty when it is one of them)."""
    published = published_md5()
    files = (
        [source / name for names in SPLIT_BATCHES.values() for name in names]
        if source.is_dir()
        else [source]
    )
    problems = []
    for path in files:
        digest, expected = md5_of(path), published.get(path.name)
        if digest != expected:
            problems.append(f"{path} has MD5 {digest}, expected {expected}")
    return problems


class CIFAR10DataModule(MNISTDataModule):
    """CIFAR-10 (50,000 training and 10,000 test colour images of 32x32) as uint8 tensors.

    Read from ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` in
    ``root`` or a ``search_dirs`` folder (torchvision's layout: both sit in its root),
    downloaded there by torchvision when missing and ``download``. The validation split is
    carved out of the training split with ``split_seed``; the test split is the official
    one. Everything else (loaders, GPU residence, flips, binarization) is
    :class:`MNISTDataModule`'s. With ``verify_checksums`` the archive (or each extracted
    batch) must have torchvision's published MD5; set it to false for your own files in
    this format.
    """

    def __init__(
        self,
        root: str = "data",
        search_dirs: list[str] | None = None,
        download: bool = True,
        val_size: PositiveInt = 5000,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = "none",
        loader: Literal["tensor", "torch"] = "tensor",
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 42,
        transform: Any = None,
        image_shape: ImageShape = IMAGE_SHAPE,
        verify_checksums: bool = True,
        hflip: bool = False,
        num_classes: NonNegativeInt | None = 10,
        dataset: Literal["cifar10"] = "cifar10",
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        if tuple(image_shape) != IMAGE_SHAPE:
            raise ValueError(f"data.image_shape={list(image_shape)}: CIFAR-10 is [3, 32, 32].")
        super().__init__(
            dataset=dataset,
            root=root,
            search_dirs=search_dirs,
            download=download,
            val_size=val_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            binarize=binarize,
            loader=loader,
            num_workers=num_workers,
            seed=seed,
            split_seed=split_seed,
            transform=transform,
            image_shape=image_shape,
            verify_checksums=verify_checksums,
            hflip=hflip,
            num_classes=num_classes,
            steps_per_batch=steps_per_batch,
        )
        self._official: dict[str, tuple[Tensor, Tensor]] = {}

    def storage_of(self, info: DatasetInfo) -> ArchiveStorage:
        if info.archive is None:
            raise ValueError(f"data.dataset={info.name!r} is not an archive dataset")
        return info.archive

    @property
    def folders(self) -> list[Path]:
        return [self.root, *self.search_dirs]

    def source(self) -> Path:
        found = find_cifar10(self.folders, self.storage.file_name)
        if found is None:
            raise DataFileError(self._missing_archive_message())
        return found

    def _missing_archive_message(self) -> str:
        where = ", ".join(str(f) for f in self.folders)
        if not self.download:
            why = "Downloading is off (data.download=false)."
        elif self._download_error is not None:
            reason = " ".join(str(self._download_error).split())
            why = f"The download failed ({reason[:300]})."
        else:
            why = "It was not downloaded."
        return (
            f"CIFAR-10 not found: looked for {self.storage.file_name} and an extracted "
            f"{BATCHES_FOLDER}/ folder in {where}. {why} Fix it in one of two ways: run with "
            f"internet access and data.download=true to fetch it into {self.root}, or "
            f"download {self.storage.url} (163 MB) yourself and put it, as it is or "
            f"extracted, in data.root={self.root}."
        )

    def prepare_data(self) -> None:
        if find_cifar10(self.folders, self.storage.file_name) is not None or not self.download:
            return
        from torchvision.datasets import CIFAR10

        try:  # torchvision checks the MD5 and extracts next to the archive
            CIFAR10(str(self.root), download=True)
        except Exception as err:  # no network, mirror down: reported when loading
            self._download_error = err

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        if not self._official:  # one pass over the archive serves both splits
            source = self.source()
            if self.verify_checksums and (problems := checksum_problems(source)):
                kind = "folder" if source.is_dir() else "archive"
                raise DataFileError(
                    f"{source} is not the published CIFAR-10 {kind} ({'; '.join(problems)}). "
                    "The download was interrupted or corrupted: delete it and run again with "
                    f"data.download=true, or fetch {self.storage.url} again. If it is your own "
                    "data in this format, set data.verify_checksums=false."
                )
            self._official = read_cifar10(source)
            self.sources = dict.fromkeys(self._official, source)
            rank_zero_info(f"CIFAR-10 train and test splits: {source}")
        return self._official.pop(split)
