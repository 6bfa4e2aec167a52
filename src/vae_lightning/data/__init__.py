"""MNIST-family data: IDX files, in-memory batch loaders and the LightningDataModule."""

from vae_lightning.data.datamodule import MNISTDataModule, TensorImageDataModule
from vae_lightning.data.idx import DataFileError

__all__ = ["DataFileError", "MNISTDataModule", "TensorImageDataModule"]
