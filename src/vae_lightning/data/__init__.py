"""Image datasets: IDX files (MNIST family), CIFAR-10's archive, generated dSprites; in-memory
batch loaders and the LightningDataModules."""

from vae_lightning.data.cifar import CIFAR10DataModule
from vae_lightning.data.datamodule import MNISTDataModule
from vae_lightning.data.dsprites import DSpritesDataModule
from vae_lightning.data.idx import DataFileError

__all__ = ["CIFAR10DataModule", "DSpritesDataModule", "DataFileError", "MNISTDataModule"]
