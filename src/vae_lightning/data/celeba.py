"""Aligned CelebA with its official train/valid/test partitions, through the decode cache.

The images are the 178x218 JPEGs of ``img_align_celeba/``; each is centre-cropped to 148x148
and resized to 64x64 (the convention of the beta-VAE literature and of AntixK's PyTorch-VAE).
``list_eval_partition.txt`` assigns every image to a split (0 train, 1 valid, 2 test). Both
are found in torchvision's layout ``<root>/celeba/`` or directly in ``<root>/``. Every label
is 0 (CelebA's attributes and identities are not classes for the VAE's plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from vae_lightning.data.datamodule import Binarize
from vae_lightning.data.decode_cache import OnBadImage, listed
from vae_lightning.data.image_files import DecodeSettings, ImageFile, ImageFolderError, stat_image
from vae_lightning.data.image_folder import DecodedImagesDataModule
from vae_lightning.data.registry import dataset_info
from vae_lightning.param_types import ImageShape, Seed

PARTITION_SPLITS = {"0": "train", "1": "val", "2": "test"}


class CelebADataModule(DecodedImagesDataModule):
    """CelebA (aligned) from local files, or torchvision's download when asked and possible."""

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 64,
        crop: PositiveInt = 148,
        download: bool = True,
        on_bad_image: OnBadImage = "fail",
        cache_dir: str | None = None,
        max_memory_gb: PositiveFloat = 8.0,
        decode_workers: PositiveInt | None = None,
        dataset: str = "celeba",
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
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__(
            dataset,
            root,
            DecodeSettings(image_size, 3, resize=True, crop=crop),
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
        self.storage = self.info.images or dataset_info("celeba").images
        self.data_root, self.download = Path(root), download
        self._download_error: Exception | None = None
        self._partition: list[tuple[str, str]] | None = None

    # ----------------------------------------------------------------- files
    @property
    def image_folder_name(self) -> str:
        return Path(self.storage.image_folder).name  # img_align_celeba

    @property
    def partition_name(self) -> str:
        return Path(self.storage.partition_file).name  # list_eval_partition.txt

    def candidate_folders(self) -> list[Path]:
        """torchvision's layout first (<root>/celeba/), then the root itself."""
        return [self.data_root / Path(self.storage.image_folder).parent, self.data_root]

    def find_folder(self) -> Path | None:
        for folder in self.candidate_folders():
            if (folder / self.image_folder_name).is_dir() and (
                folder / self.partition_name
            ).is_file():
                return folder
        return None

    def prepare_data(self) -> None:
        if self.find_folder() is None and self.download:
            from torchvision import datasets

            try:
                datasets.CelebA(str(self.data_root), split="all", target_type=[], download=True)
            except Exception as err:  # offline, Google Drive quota, gdown missing: report
                self._download_error = err
        super().prepare_data()

    def missing_message(self) -> str:
        if not self.download:
            why = "Downloading is off (data.download=false)."
        elif self._download_error is not None:
            reason = " ".join(str(self._download_error).split())[:300]
            why = f"torchvision's Google Drive download failed ({reason})."
        else:
            why = "They were not downloaded."
        tried = " or ".join(str(folder) for folder in self.candidate_folders())
        target = self.candidate_folders()[0]
        return (
            f"CelebA not found: looked for {self.image_folder_name}/ and {self.partition_name} "
            f"in {tried}. {why} Put the files there by hand: unzip img_align_celeba.zip "
            f"(the aligned and cropped JPEGs, 202,599 files 000001.jpg ...) into "
            f"{target / self.image_folder_name}/ and save {self.partition_name} (the official "
            f"splits) as {target / self.partition_name}; both come from the CelebA page "
            "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) or its Google Drive folder. "
            "Or set data.root to the folder that holds them."
        )

    @property
    def image_root(self) -> Path:
        folder = self.find_folder()
        if folder is None:
            raise ImageFolderError(self.missing_message())
        return folder

    def partition(self) -> list[tuple[str, str]]:
        """(file name, split) of every image, in the partition file's order."""
        if self._partition is None:
            path = self.image_root / self.partition_name
            entries = []
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) != 2 or fields[1] not in PARTITION_SPLITS:
                    raise ImageFolderError(
                        f"{path} line {number} reads {line.strip()!r}, expected "
                        "'<image file> <0|1|2>' (0 train, 1 valid, 2 test): the file is not "
                        "CelebA's list_eval_partition.txt or is damaged. Replace it."
                    )
                entries.append((fields[0], PARTITION_SPLITS[fields[1]]))
            self._partition = entries
        return self._partition

    def image_files(self) -> list[ImageFile]:
        folder, root = self.image_folder_name, self.image_root
        names = [name for name, _ in self.partition()]
        missing = [name for name in names if not (root / folder / name).is_file()]
        if missing:
            raise ImageFolderError(
                f"{root / self.partition_name} lists {len(names)} images, but {len(missing)} "
                f"are not in {root / folder}/: {listed(missing, root / folder)}. The folder "
                "is incomplete: unzip img_align_celeba.zip into it again."
            )
        return [stat_image(root, f"{folder}/{name}") for name in names]

    # ---------------------------------------------------------------- splits
    def read_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        files, decoded = self.decode()
        split_of = {f"{self.image_folder_name}/{name}": s for name, s in self.partition()}
        splits = [split_of[files[i].relative] for i in decoded.kept]
        rows_of = {
            name: [row for row, split in enumerate(splits) if split == name]
            for name in PARTITION_SPLITS.values()
        }
        self.sources = dict.fromkeys(rows_of, self.image_root / self.image_folder_name)
        return self.mapped_splits(decoded, [0] * len(splits), rows_of)
