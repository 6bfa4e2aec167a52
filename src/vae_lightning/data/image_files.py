"""Image files on disk: finding them in a folder tree and decoding one into a uint8 array.

Decoding is deterministic (same file, same settings -> same bytes), which is what lets
data/decode_cache.py decode a folder once and key the result by the files and the settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from vae_lightning.data.idx import DataFileError

# Suffixes (compared lower-case) of the formats read; any other file is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
# Folders whose name starts with this are skipped while scanning (the cache, .git, ...).
HIDDEN_PREFIX = "."


class ImageFolderError(DataFileError):
    """An image folder is empty, or holds images that cannot be used as asked."""


@dataclass(frozen=True)
class ImageFile:
    """One image file: its path relative to the folder (POSIX form), size and mtime, which
    together fingerprint it for the decode cache."""

    relative: str
    size: int
    mtime_ns: int


def stat_image(root: Path, relative: str) -> ImageFile:
    """The :class:`ImageFile` of ``root / relative``."""
    status = (root / relative).stat()
    return ImageFile(relative, status.st_size, status.st_mtime_ns)


def scan_images(root: Path) -> list[ImageFile]:
    """Every PNG/JPEG/WebP file below ``root`` (recursively, hidden folders skipped), sorted
    by relative path, so the order never depends on the file system's listing order."""
    found = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(HIDDEN_PREFIX)]
        base = Path(folder)
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(stat_image(root, (base / name).relative_to(root).as_posix()))
    return sorted(found, key=lambda image: image.relative)


@dataclass(frozen=True)
class DecodeSettings:
    """How a file becomes a (channels, image_size, image_size) uint8 array.

    ``crop``: side of a centre square cut out first (CelebA's 148), or None. ``resize``:
    scale the shorter side to ``image_size`` then cut the centre square (aspect kept); with
    False an image of another size is an error.
    """

    image_size: int
    channels: Literal[1, 3]
    resize: bool = True
    crop: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def tag(self) -> str:
        """A short readable name of the settings, used in cache folder names."""
        colour = "grey" if self.channels == 1 else "rgb"
        crop = f"-crop{self.crop}" if self.crop else ""
        return f"{self.image_size}px-{colour}{crop}-{'resize' if self.resize else 'exact'}"


class WrongSize(Exception):
    """An image that would need resizing, with resizing off."""


def centre_square(image: Image.Image, side: int) -> Image.Image:
    """The centred ``side`` x ``side`` square of ``image`` (rounding as torchvision does)."""
    width, height = image.size
    left, top = int(round((width - side) / 2)), int(round((height - side) / 2))
    return image.crop((left, top, left + side, top + side))


def decode_image(path: Path, settings: DecodeSettings) -> np.ndarray:
    """The pixels of ``path`` as uint8 (C, H, W) under ``settings``.

    Raises OSError / UnidentifiedImageError for unreadable files (truncated, corrupt, not an
    image) and :class:`WrongSize` when the size is wrong and resizing is off.
    """
    with Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, not later
        # Greyscale among colour, palettes, alpha: all become the requested channels.
        image = opened.convert("L" if settings.channels == 1 else "RGB")
    if settings.crop is not None and min(image.size) >= settings.crop:
        image = centre_square(image, settings.crop)
    size = settings.image_size
    if image.size != (size, size):
        if not settings.resize:
            raise WrongSize(f"{image.size[0]}x{image.size[1]}")
        scale = size / min(image.size)
        scaled = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
        image = centre_square(image.resize(scaled, Image.Resampling.BILINEAR), size)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def decode_error(path: Path, settings: DecodeSettings) -> tuple[np.ndarray | None, str | None]:
    """``decode_image``, with the reason as text instead of an exception (for a pool)."""
    try:
        return decode_image(path, settings), None
    except WrongSize as err:
        return None, f"size {err}"
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        return None, " ".join(str(err).split()) or type(err).__name__
