"""Real data: Fashion-MNIST exported to PNG files trains through data=image_folder exactly as
data=fashion_mnist does on the same split (slow: the export writes 70 000 files)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from helpers.images import folder_train_run
from helpers.paths import FASHION_MNIST, PROJECT_ROOT
from vae_lightning.data import ImageFolderDataModule, MNISTDataModule


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "image_folder_benchmark", PROJECT_ROOT / "benchmarks" / "image_folder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"needs Fashion-MNIST in {FASHION_MNIST}")
def test_exported_fashion_mnist_trains_to_the_same_val_elbo(tmp_path):
    """The export writes data=fashion_mnist's own train/val/test splits (split_seed 42) as
    train/ val/ test/ folders of PNGs numbered in split order, so data.split=folders holds the
    very same uint8 tensors in the same order: same shuffles, same fixed binarization of the
    validation images, hence the same validation ELBO, not merely one within noise."""
    folder = tmp_path / "fashion-png"
    assert load_benchmark().export_fashion_mnist(folder) == {
        "train": 55000,
        "val": 5000,
        "test": 10000,
    }
    folder_data = [
        "data=image_folder",
        f"data.root={folder}",
        "data.split=folders",
        "data.channels=1",
        "data.image_size=28",
        "data.binarize=dynamic",
    ]
    idx_data = ["data=fashion_mnist", f"data.root={tmp_path / 'no-copy'}", "data.download=false"]
    reference = MNISTDataModule(
        dataset="fashion_mnist", root=str(FASHION_MNIST), download=False, binarize="dynamic"
    )
    reference.setup("fit")
    exported = ImageFolderDataModule(
        root=str(folder), image_size=28, channels=1, image_shape=(1, 28, 28), split="folders"
    )
    exported.prepare_data()
    exported.setup("fit")
    for split in ("train", "val", "test"):
        assert torch.equal(exported.splits[split][0], reference.splits[split][0]), split

    common = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=100",
        "~callbacks.progress_bar",
        "report=false",
        "test=false",
    ]
    ours = folder_train_run(tmp_path / "folder-run", [*folder_data, *common])
    theirs = folder_train_run(tmp_path / "idx-run", [*idx_data, *common])
    assert math.isfinite(theirs.metrics["val/elbo"])
    assert math.isclose(ours.metrics["val/elbo"], theirs.metrics["val/elbo"], rel_tol=1e-6)
