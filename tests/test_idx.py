"""IDX reading: round trips and a clear error for every kind of broken file."""

import gzip

import numpy as np
import pytest
import torch

from helpers.data import write_idx
from vae_lightning.data.idx import DataFileError, read_idx, read_image_label_pair


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    tensor = read_idx(write_idx(tmp_path / name, array))
    assert tensor.dtype == torch.uint8
    assert torch.equal(tensor, torch.from_numpy(array))


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float type code
    with pytest.raises(DataFileError, match="bad-idx3-ubyte is not an unsigned-byte IDX file"):
        read_idx(path)


def test_payload_shorter_than_header_says(tmp_path):
    path = write_idx(tmp_path / "short-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFileError, match=r"announces shape \(10, 28, 28\).*truncated"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "cut-idx3-ubyte.gz", np.ones((50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(
        DataFileError, match="cut-idx3-ubyte.gz cannot be read.*truncated or corrupt"
    ):
        read_idx(path)


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "noise-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(DataFileError, match="cannot be read"):
        read_idx(path)


def test_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "i-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    labels = write_idx(tmp_path / "l-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataFileError, match="5 images but .* 4 labels"):
        read_image_label_pair(images, labels, (28, 28))


def test_wrong_image_size(tmp_path):
    images = write_idx(tmp_path / "i-idx3-ubyte", np.zeros((5, 32, 32), np.uint8))
    labels = write_idx(tmp_path / "l-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataFileError, match=r"shape \(5, 32, 32\), expected \(N, 28, 28\)"):
        read_image_label_pair(images, labels, (28, 28))


def test_gzip_with_raw_content_is_read_as_raw(tmp_path):
    """A gzipped file is detected by its suffix; a raw file with that name fails clearly."""
    path = tmp_path / "raw-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x09")
    assert read_idx(path).tolist() == [7, 9]
