"""Published MD5s: a partial download where vae-train downloads never passes, and another
dataset's file is recognised anywhere; your own files under the official names still work."""

import shutil

import pytest

from helpers.data import write_dataset
from helpers.paths import FASHION_MNIST, SHARED_MNIST
from vae_lightning.data import DataFileError, MNISTDataModule
from vae_lightning.data.checksums import known_md5, verify_checksum

needs_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="../shared/data/mnist (real MNIST test split) is absent",
)


def test_known_checksums_come_from_torchvision_and_debian():
    mnist = known_md5()["mnist"]
    assert mnist["t10k-labels-idx1-ubyte.gz"] == {"ec29112dd5afa0611ce80d1b7f02629c"}
    assert len(known_md5()["fashion_mnist"]["train-images-idx3-ubyte.gz"]) == 2


@needs_mnist
def test_published_file_passes_and_a_cut_download_fails(tmp_path):
    original = SHARED_MNIST / "t10k-images-idx3-ubyte.gz"
    verify_checksum(original, "mnist", strict=True)
    cut = tmp_path / "MNIST" / "raw" / original.name
    cut.parent.mkdir(parents=True)
    cut.write_bytes(original.read_bytes()[:500_000])  # what an interrupted download leaves
    with pytest.raises(DataFileError) as info:
        verify_checksum(cut, "mnist", strict=True)
    message = str(info.value)
    assert f"{cut} is not the published MNIST file" in message
    assert "expected 9fb629c4189551a2d022fa330f9573f3" in message
    assert f"rm '{cut}'" in message and "data.verify_checksums=false" in message
    verify_checksum(cut, "mnist", strict=False)  # outside the download folder: idx.py's job


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_another_datasets_files_are_recognised(tmp_path):
    verify_checksum(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", "fashion_mnist", strict=True)
    with pytest.raises(DataFileError, match="is Fashion-MNIST's t10k-labels-idx1-ubyte.gz, not"):
        verify_checksum(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", "mnist", strict=False)


def test_own_files_in_the_download_folder_need_the_switch(tmp_path):
    raw = write_dataset(tmp_path / "MNIST" / "raw", gz=True)
    strict = MNISTDataModule(root=str(tmp_path), download=False, val_size=100)
    with pytest.raises(DataFileError, match="is not the published MNIST file"):
        strict.setup("fit")
    relaxed = MNISTDataModule(
        root=str(tmp_path), download=False, val_size=100, verify_checksums=False
    )
    relaxed.setup("fit")
    assert len(relaxed.splits["train"][0]) == 500
    shutil.rmtree(raw)
