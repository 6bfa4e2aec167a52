"""Reading and checking IDX files (the MNIST file format), gzipped or not.

Every fault is raised as a DataFileError that names the file and says what to do, so a
corrupt download never surfaces as a numpy or gzip traceback in the middle of training.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

from vae_lightning.errors import UserError

UINT8_TYPE_CODE = 0x08


class DataFileError(UserError, RuntimeError):
    """A data file is missing, truncated or not what it claims to be."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(
            f"{path} cannot be read ({err}): the file is truncated or corrupt. Delete it and "
            "download it again (or copy a good one in its place)."
        ) from err


def read_idx(path: Path) -> Tensor:
    """The uint8 array stored in an IDX file, shaped as its header says."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != UINT8_TYPE_CODE:
        raise DataFileError(
            f"{path} is not an unsigned-byte IDX file (magic number {raw[:4].hex() or 'empty'},"
            " expected 000008xx). It is probably not an MNIST file or was saved wrongly; "
            "replace it with the original download."
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataFileError(f"{path} ends inside its header: the file is truncated.")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    payload = raw[header_size:]
    if len(payload) != math.prod(shape):
        raise DataFileError(
            f"{path} holds {len(payload)} data bytes but its header announces shape {shape} "
            f"({math.prod(shape)} bytes): the file is truncated or corrupt. Download it again."
        )
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(shape)


def read_image_label_pair(
    images_path: Path, labels_path: Path, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Images as uint8 (N, 1, H, W) and labels as int64 (N,), checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or tuple(images.shape[1:]) != tuple(image_size):
        raise DataFileError(
            f"{images_path} holds images of shape {tuple(images.shape)}, expected "
            f"(N, {image_size[0]}, {image_size[1]}) (data.image_shape): either the file is "
            "not this dataset's image file or data.image_shape is wrong."
        )
    if labels.ndim != 1:
        raise DataFileError(f"{labels_path} has shape {tuple(labels.shape)}, expected (N,).")
    if len(images) != len(labels):
        raise DataFileError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels: the two files come from different splits or one is incomplete."
        )
    return images.unsqueeze(1), labels.long()
