"""Data: IDX files and image folders, in-memory batch loaders and the LightningDataModules."""

from vae_lightning.data.celeba import CelebADataModule
from vae_lightning.data.datamodule import MNISTDataModule, TensorImageDataModule
from vae_lightning.data.idx import DataFileError
from vae_lightning.data.image_folder import ImageFolderDataModule

__all__ = [
    "CelebADataModule",
    "DataFileError",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TensorImageDataModule",
]
