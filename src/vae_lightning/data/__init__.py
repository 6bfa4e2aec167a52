"""Image datasets: IDX files (MNIST family), CIFAR-10's archive, generated dSprites, image
folders and CelebA (decoded once into a uint8 cache); in-memory batch loaders and the
LightningDataModules."""

from vae_lightning.data.celeba import CelebADataModule
from vae_lightning.data.cifar import CIFAR10DataModule
from vae_lightning.data.datamodule import MNISTDataModule, TensorImageDataModule
from vae_lightning.data.dsprites import DSpritesDataModule
from vae_lightning.data.idx import DataFileError
from vae_lightning.data.image_folder import ImageFolderDataModule

__all__ = [
    "CIFAR10DataModule",
    "CelebADataModule",
    "DSpritesDataModule",
    "DataFileError",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TensorImageDataModule",
]
