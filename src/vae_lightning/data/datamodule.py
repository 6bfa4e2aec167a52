"""MNIST and Fashion-MNIST as a LightningDataModule, from local IDX files or a download."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import PILToTensor

from vae_lightning.data.augment import random_hflip
from vae_lightning.data.checksums import verify_checksum
from vae_lightning.data.idx import DataFileError, read_image_label_pair
from vae_lightning.data.loaders import (
    Batch,
    BatchGroup,
    PreparedBatches,
    ShardedPermutation,
    TensorBatchLoader,
)
from vae_lightning.data.registry import DatasetInfo, IdxStorage, dataset_info
from vae_lightning.errors import ConfigError
from vae_lightning.param_types import ImageShape, Seed

Binarize = Literal["dynamic", "static", "none"]


def candidate_dirs(roots: list[Path], storage: IdxStorage) -> list[Path]:
    """Folders that may hold the IDX files: each root itself and torchvision's raw layout."""
    return [folder for root in roots for folder in (root, root / storage.raw_folder)]


def find_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def to_unit_interval(images: Tensor) -> Tensor:
    """uint8 pixels -> float in [0, 1]; float images (from a transform) pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def prepare_images(images: Tensor, fresh_draw: bool) -> Tensor:
    """Pixels in [0, 1]; with ``fresh_draw`` a new Bernoulli sample of every pixel."""
    probs = to_unit_interval(images)
    if not fresh_draw:
        return probs
    # u < p with u ~ U[0, 1) is 1 with probability p: the Bernoulli draw, in two vectorised
    # kernels. torch.bernoulli took 1.5 ms for a batch of 128 MNIST images on a 2-core CPU,
    # this 0.44 ms (an eighth of an MLP step). The fixed draws (binarize_with_seed) keep
    # torch.bernoulli: their values, hence every reported static-binarization figure, stay.
    return torch.rand_like(probs).lt_(probs)


def storage_device(root_device: torch.device, loader: str) -> torch.device:
    """Where the split tensors live, given the device the trainer trains on.

    With the tensor loader on a CUDA device the whole dataset goes there once (47 MB of
    uint8 for MNIST): batches are then gathered on the GPU and Lightning's host->device
    transfer is a no-op. The DataLoader path builds PIL images from host memory, and other
    accelerators (MPS, XLA) keep the host path, which is the one tested there.
    """
    if loader == "tensor" and root_device.type == "cuda":
        return root_device
    return torch.device("cpu")


def binarize_with_seed(images: Tensor, seed: int) -> Tensor:
    """A fixed Bernoulli draw per pixel, stored as uint8 0/255 so it reloads as exact 0/1."""
    probs = to_unit_interval(images)
    draws = torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed))
    return draws.to(torch.uint8).mul_(255)


# One stream per split for the fixed binarizations: the high 32 bits of the seed name the split.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def binarization_seed(split: str, split_seed: int) -> int:
    """The seed of ``split``'s fixed 0/1 draw: a function of that split alone.

    It does not depend on which other splits are binarized, so the validation images are the
    same under ``binarize=dynamic`` and ``static``. The validation and (static) training draws
    follow ``split_seed``, which also picks their images; the test split is the official one,
    so its draw is the same for every run and test NLLs compare across split seeds.
    """
    own = 0 if split == "test" else split_seed
    return SPLIT_STREAMS[split] << 32 | own


class ImageDataset(Dataset):
    """Per-sample PIL images through a torchvision transform: the classic, flexible path."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels = self.images[index]  # (C, H, W): one channel is grey, three are RGB
        if len(pixels) == 1:
            image = Image.fromarray(pixels[0].numpy(), mode="L")
        else:
            image = Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class TensorImageDataModule(L.LightningDataModule):
    """Images as uint8 (N, C, H, W) tensors, binarized on the device batch by batch.

    A subclass says where the images come from: :meth:`read_splits` returns the train, val
    and test splits as uint8 images and int64 labels (and records in ``sources`` the file or
    folder each was read from); :meth:`prepare_data` may download. Everything after that is
    shared: device placement, binarization, loaders.

    With ``loader="tensor"`` (default) ``splits`` live on the training GPU when there is one
    (see :func:`storage_device`), so training copies nothing from the host per batch;
    ``loader="torch"`` is the classic per-sample Dataset + DataLoader from host memory.

    Binarization: ``dynamic`` draws a fresh Bernoulli sample each time a training image is
    seen; validation and test images get one fixed, seeded draw (so figures are comparable
    across runs); ``static`` fixes the training draw too; ``none`` keeps grey levels in [0, 1].
    With ``hflip`` each training image is mirrored left-right with probability 1/2, batch by
    batch on the device, drawn from the training stream (see data/augment.py).

    With ``steps_per_batch`` K > 1 (tensor loader), each training batch Lightning sees is a
    group of K batches of ``batch_size``, on each of which the model takes an optimizer step
    (VAELitModule): the same steps, draws and numbers as K = 1, with Lightning's per-batch
    work paid once per group (docs/speed.md, "Several optimizer steps per batch").
    """

    def __init__(
        self,
        dataset: str,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = "dynamic",
        loader: Literal["tensor", "torch"] = "tensor",
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 42,
        transform: Any = None,
        image_shape: ImageShape = (1, 28, 28),
        hflip: bool = False,
        num_classes: NonNegativeInt | None = None,
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__()
        self.info = dataset_info(dataset)
        # How many classes the labels take, for conditional models (model=cvae); 0 or None
        # declares the data unlabelled. A dataset whose classes the registry knows: their
        # count or nothing.
        known = len(self.info.class_names)
        if known and num_classes not in (None, 0, known):
            raise ValueError(
                f"data.num_classes={num_classes} but {self.info.title} has {known} classes; "
                f"set data.num_classes={known}."
            )
        self.num_classes = num_classes or 0
        self.dataset = dataset
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.binarize, self.loader, self.num_workers = binarize, loader, num_workers
        self.seed, self.split_seed = seed, split_seed
        self.transform = transform if transform is not None else PILToTensor()
        self.image_shape = tuple(image_shape)
        self.hflip = hflip
        self.steps_per_batch = steps_per_batch
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.sources: dict[str, Path] = {}  # split -> the file or folder it was read from

    def read_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The train/val/test splits as uint8 (N, C, H, W) images and int64 labels, before
        any binarization, in host memory (or memory-mapped)."""
        raise NotImplementedError

    @property
    def training_device(self) -> torch.device:
        """The device the attached trainer trains on (this process's device under DDP)."""
        return self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()
        # Lightning calls setup after choosing the device, once per fit/validate/test: move
        # (a no-op when already there), so a data module reused by another trainer follows it.
        device = storage_device(self.training_device, self.loader)
        self.splits = {
            name: (images.to(device), labels.to(device))
            for name, (images, labels) in self.splits.items()
        }

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The splits of :meth:`read_splits` with the fixed, seeded binarizations applied."""
        splits = self.read_splits()
        # Fixed, seeded binarization for evaluation (and for training when static).
        fixed = ("train", "val", "test") if self.binarize == "static" else ("val", "test")
        if self.binarize != "none":
            for name in fixed:
                split_images, split_labels = splits[name]
                seed = binarization_seed(name, self.split_seed)
                splits[name] = (binarize_with_seed(split_images, seed), split_labels)
        return splits

    # ---------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool) -> Any:
        images, labels = self.splits[split]
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        if self.loader == "torch":
            # Lightning wraps this in a DistributedSampler under DDP.
            dataset = ImageDataset(images, labels, self.transform)
            return DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=shuffle,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=self.training_device.type == "cuda",  # asynchronous copies
            )
        if not shuffle:
            batch_size = self._eval_batch_size(split, len(images), world)
        sampler = ShardedPermutation(
            len(images),
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            pad=shuffle,
            # Evaluation: whole batches per rank, see ShardedPermutation and
            # VAELitModule.seed_eval_batch.
            block=1 if shuffle else batch_size,
        )
        steps_per_batch = self.steps_per_batch if split == "train" else 1
        return TensorBatchLoader(images, labels, batch_size, sampler, steps_per_batch)

    def _eval_batch_size(self, split: str, size: int, world: int) -> int:
        """eval_batch_size, made smaller when there are fewer batches than DDP ranks.

        Each rank evaluates whole batches and Lightning needs at least one per rank.
        """
        fitting = max(1, size // world)
        if self.eval_batch_size <= fitting:
            return self.eval_batch_size
        if world > 1:
            rank_zero_warn(
                f"The {split} split ({size} images) has fewer batches of "
                f"data.eval_batch_size={self.eval_batch_size} than the {world} DDP processes, "
                f"so it is evaluated in batches of {fitting}. Its metrics equal those of a "
                f"single-process run with data.eval_batch_size={fitting}; set that here too "
                "to keep them comparable across device counts."
            )
        return fitting

    def train_dataloader(self) -> Any:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Flips, float conversion and dynamic binarization, on the whole batch, on its
        device; a BatchGroup's batches one by one as the training step iterates them."""
        if isinstance(batch, BatchGroup):
            return PreparedBatches(batch, self._prepare)
        return self._prepare(batch)

    def _prepare(self, batch: Batch) -> Batch:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if training and self.hflip:
            images = random_hflip(images)
        return prepare_images(images, fresh_draw=training and self.binarize == "dynamic"), labels


class MNISTDataModule(TensorImageDataModule):
    """MNIST-family images from IDX files (local, or downloaded with torchvision).

    The validation split is carved out of the official training split with ``split_seed``;
    the test split is the official one and never touches training. With ``verify_checksums``
    the ``.gz`` files are checked against their published MD5s (see data/checksums.py).
    Loading, binarization and loaders: :class:`TensorImageDataModule`.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        root: str = "data",
        search_dirs: list[str] | None = None,
        download: bool = True,
        val_size: PositiveInt = 5000,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = "dynamic",
        loader: Literal["tensor", "torch"] = "tensor",
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 42,
        transform: Any = None,
        image_shape: ImageShape = (1, 28, 28),
        verify_checksums: bool = True,
        hflip: bool = False,
        num_classes: NonNegativeInt | None = None,
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__(
            dataset,
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
            num_classes=num_classes,
            steps_per_batch=steps_per_batch,
        )
        self.storage = self.storage_of(self.info)
        self.root, self.download = Path(root), download
        self.search_dirs = [Path(p) for p in search_dirs or []]
        self.val_size = val_size
        self.verify_checksums = verify_checksums
        self._download_error: Exception | None = None

    def storage_of(self, info: DatasetInfo) -> Any:
        """The registry's storage group this module reads (subclasses read other formats)."""
        if info.idx is None:
            raise ValueError(
                f"data.dataset={info.name!r} is not stored as IDX files, which is all "
                f"{type(self).__name__} reads; pick its own data config (data={info.name})."
            )
        return info.idx

    # ----------------------------------------------------------------- files
    @property
    def folders(self) -> list[Path]:
        return candidate_dirs([self.root, *self.search_dirs], self.storage)

    def split_files(self, split: str) -> tuple[Path, Path]:
        found = [find_file(self.folders, name) for name in self.storage.split_files[split]]
        if None in found:
            raise DataFileError(self._missing_files_message(split))
        return found[0], found[1]

    def _missing_files_message(self, split: str) -> str:
        names = ", ".join(f"{n}[.gz]" for n in self.storage.split_files[split])
        where = ", ".join(str(f) for f in self.folders)
        if not self.download:
            why = "Downloading is off (data.download=false)."
        elif self._download_error is not None:
            reason = " ".join(str(self._download_error).split())  # torchvision's is multi-line
            why = f"The download failed ({reason[:300]})."
        else:
            why = "They were not downloaded."
        return (
            f"{self.dataset} {split} files not found: looked for {names} in {where}. {why} "
            f"Fix it in one of two ways: run with internet access and data.download=true to "
            f"fetch them into {self.root}, or copy the IDX files (gzipped or not) into "
            f"data.root={self.root} (flat, or in torchvision's "
            f"{self.storage.raw_folder}/ layout). Offline, "
            "`apt-get install dataset-fashion-mnist` makes data=fashion_mnist work as is."
        )

    def prepare_data(self) -> None:
        """Download (rank 0 only, as Lightning calls it) when files are missing and allowed."""
        missing = any(find_file(self.folders, n) is None for n in self.storage.file_names)
        if not (missing and self.download):
            return
        from torchvision import datasets

        try:
            getattr(datasets, self.storage.torchvision_class)(str(self.root), download=True)
        except Exception as err:  # no network, mirror down, checksum mismatch: report later
            self._download_error = err

    # ---------------------------------------------------------------- splits
    @property
    def download_folder(self) -> Path:
        """Where torchvision puts the files it downloads (and verifies)."""
        return self.root / self.storage.raw_folder

    def load_split(self, split: str) -> tuple[Tensor, Tensor]:
        files = self.split_files(split)
        self.sources[split] = files[0]
        rank_zero_info(self.source_note(split, files[0]))
        if self.verify_checksums:
            for path in files:
                # Strict where downloads land: a partial download must never pass.
                strict = path.parent.resolve() == self.download_folder.resolve()
                verify_checksum(path, self.dataset, strict=strict)
        return read_image_label_pair(*files, self.image_shape[1:])

    def source_note(self, split: str, images_file: Path) -> str:
        """Where a split was read from, and why there: the run says so, never silently
        falling back from data.root to a search dir (Debian's copy, say)."""
        note = f"{self.info.title} {split} split: {images_file}"
        if images_file.parent in self.search_dir_folders and images_file.parent != self.root:
            why = "does not exist" if not self.root.exists() else "has no such files"
            note += f" (from data.search_dirs: data.root={self.root} {why})"
        return note

    @property
    def search_dir_folders(self) -> set[Path]:
        return set(candidate_dirs(self.search_dirs, self.storage))

    def read_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The official train split less a seeded validation split, and the test split."""
        images, labels = self.load_split("train")
        if not 0 < self.val_size < len(images):
            raise ConfigError(
                f"data.val_size={self.val_size} must be between 1 and {len(images) - 1}: "
                f"the training split ({self.sources['train']}) holds {len(images)} images. "
                "Set a smaller data.val_size, or point data.root at the full dataset."
            )
        order = torch.randperm(
            len(images), generator=torch.Generator().manual_seed(self.split_seed)
        )
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        test_images, test_labels = self.load_split("test")
        return {
            "train": (images[train_idx], labels[train_idx]),
            "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_labels),
        }
