"""dSprites (Matthey et al. 2017), generated: 737,280 binary 64x64 images of one white shape
on black, one per combination of the six ground-truth factors, in the order of DeepMind's
``dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz`` (C order over the factors below, so image
``i`` has the factor classes ``np.unravel_index(i, FACTOR_SIZES)``).

How an image is drawn: each of the 3 x 6 x 40 (shape, scale, orientation) sprites is
rasterised once, centred on a pixel of a 96x96 canvas, by testing each pixel centre against
the shape's implicit inequality (no anti-aliasing). The 32 x 32 positions are whole-pixel
shifts of that sprite (its centre on pixel 16 + k, k = 0..31, along each axis), so every
image is a 64x64 window of its sprite's canvas and the whole set is one gather. docs/data.md
says where this differs from DeepMind's file; when that file is in ``data.root`` it is read
instead.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from pydantic import NonNegativeInt, PositiveInt
from torch import Tensor

from vae_lightning.data.datamodule import Binarize, MNISTDataModule
from vae_lightning.data.idx import DataFileError
from vae_lightning.data.registry import ArchiveStorage, DatasetInfo
from vae_lightning.errors import ConfigError
from vae_lightning.param_types import ImageShape, Seed

FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
NUM_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
IMAGE_SIZE = 64
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)
SHAPES = ("square", "ellipse", "heart")

# Pixel geometry. A sprite's centre sits on the centre of pixel FIRST_CENTRE + k (k = class of
# posX or posY): the positions span pixels 16..47, leaving a 16-pixel margin each side, wider
# than the largest sprite's reach (a rotated square at scale 1: 10 * sqrt(2) = 14.1 pixels).
FIRST_CENTRE = 16
HALF_SIZE = 10.0  # pixels from the centre to a side of the square at scale 1
CANVAS = IMAGE_SIZE + FACTOR_SIZES[4]  # 96: room for every shift of a 64x64 window
CANVAS_CENTRE = CANVAS // 2  # the canvas pixel the sprite is centred on
ELLIPSE_MINOR = 0.5  # ratio of the ellipse's minor to major axis
# The heart (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in [-1.14, 1.14], y in [-1, 1.24]: shrink it
# by HEART_ZOOM and raise it by HEART_LIFT so that it is about as wide as the square and
# centred on the sprite's centre.
HEART_ZOOM, HEART_LIFT = 1.2, 0.118

# Dataset-wide seed of the subset and the test split: both are the same for every run (only
# the validation split follows data.split_seed), so test figures compare across runs.
DATA_SEED = 0


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def factor_values(classes: Tensor) -> Tensor:
    """Factor classes (N, 6) -> the values DeepMind's ``latents_values`` lists (float64):
    color 1; shape 1, 2, 3; scale 0.5..1 (6 steps); orientation 0..2 pi (40 steps, both
    ends, so 0 and 2 pi are the same image as in DeepMind's file); posX, posY 0..1 (32)."""
    grids = [
        torch.ones(1, dtype=torch.float64),
        torch.arange(1, 4, dtype=torch.float64),
        torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
        torch.linspace(0.0, 2 * math.pi, 40, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
        torch.linspace(0.0, 1.0, 32, dtype=torch.float64),
    ]
    return torch.stack([grid[classes[:, k]] for k, grid in enumerate(grids)], dim=1)


def factor_classes(indices: Tensor) -> Tensor:
    """Image indices of the full set -> their factor classes (N, 6), int64."""
    classes, rest = [], indices.long()
    for size in reversed(FACTOR_SIZES):
        classes.append(rest % size)
        rest = rest // size
    return torch.stack(classes[::-1], dim=1)


def sprite_masks(shape: int, scale: float, angles: Tensor) -> Tensor:
    """(len(angles), CANVAS, CANVAS) bool: one sprite per angle, centred on CANVAS_CENTRE.

    A pixel is on when its centre lies in the shape (closed). Angles turn the shape
    anticlockwise as seen in the image (rows grow downwards).
    """
    offsets = torch.arange(CANVAS, dtype=torch.float64) - CANVAS_CENTRE
    right, up = offsets[None, None, :], -offsets[None, :, None]  # columns, rows
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    radius = scale * HALF_SIZE
    # Coordinates in the sprite's own frame (turned back by its angle), in units of radius.
    x = (right * cos + up * sin) / radius
    y = (up * cos - right * sin) / radius
    if SHAPES[shape] == "square":
        return torch.maximum(x.abs(), y.abs()) <= 1
    if SHAPES[shape] == "ellipse":
        return x**2 + (y / ELLIPSE_MINOR) ** 2 <= 1
    x, y = x * HEART_ZOOM, y * HEART_ZOOM + HEART_LIFT
    return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3


@functools.cache
def sprite_canvases() -> Tensor:
    """Every (shape, scale, orientation) sprite: (3 * 6 * 40, CANVAS, CANVAS) uint8 0/255,
    in factor order (6.6 MB, drawn once per process; never modified)."""
    scales = torch.linspace(0.5, 1.0, FACTOR_SIZES[2], dtype=torch.float64)
    angles = torch.linspace(0.0, 2 * math.pi, FACTOR_SIZES[3], dtype=torch.float64)
    masks = [
        sprite_masks(shape, float(scale), angles)
        for shape in range(FACTOR_SIZES[1])
        for scale in scales
    ]
    return torch.cat(masks).to(torch.uint8).mul_(255)


def sprite_index(classes: Tensor) -> Tensor:
    """The canvas of each image's (shape, scale, orientation)."""
    return (classes[:, 1] * FACTOR_SIZES[2] + classes[:, 2]) * FACTOR_SIZES[3] + classes[:, 3]


# The window of posX = posY = 0 starts at this canvas row and column: it puts the sprite's
# centre (CANVAS_CENTRE) on image pixel FIRST_CENTRE. Each position step starts it one earlier.
WINDOW_START = CANVAS_CENTRE - FIRST_CENTRE


def render_windows(classes: Tensor) -> Tensor:
    """:func:`render` by indexing the 2-D windows of the canvases: no set-up cost, about
    14 us per image on one core (a 64x64 strided gather each)."""
    windows = sprite_canvases().unfold(1, IMAGE_SIZE, 1).unfold(2, IMAGE_SIZE, 1)
    rows, cols = WINDOW_START - classes[:, 5], WINDOW_START - classes[:, 4]
    return windows[sprite_index(classes), rows, cols].unsqueeze(1)


def render_rows(classes: Tensor) -> Tensor:
    """:func:`render` for many images: each canvas is first cut to the 64 columns of each
    posX (141 MB, about 1 s), after which an image is one run of 4096 bytes and the whole
    set a single ``index_select`` of rows (about 3 s for all 737,280 on one core)."""
    first = WINDOW_START - (FACTOR_SIZES[4] - 1)  # the column window of posX = 31
    by_column = sprite_canvases().unfold(2, IMAGE_SIZE, 1)  # (sprites, CANVAS, 33, 64)
    by_pos_x = by_column[:, :, first : first + FACTOR_SIZES[4]].flip(2)  # posX 0..31
    flat = by_pos_x.permute(0, 2, 1, 3).contiguous().view(-1)  # (sprites, posX, CANVAS, 64)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    # Row r of this view: the 4096 bytes from byte 64 r, i.e. any 64 consecutive canvas rows.
    starts = flat.as_strided(((len(flat) - pixels) // IMAGE_SIZE + 1, pixels), (IMAGE_SIZE, 1))
    top_row = WINDOW_START - classes[:, 5]
    row = (sprite_index(classes) * FACTOR_SIZES[4] + classes[:, 4]) * CANVAS + top_row
    return starts.index_select(0, row).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


# From this many images on, render_rows' set-up pays for itself.
ROWS_FROM = 100_000


def render(classes: Tensor) -> Tensor:
    """The images (N, 1, 64, 64) uint8 0/255 of the given factor classes (N, 6): the 64x64
    window of each image's sprite canvas that puts the sprite's centre on pixel
    (row FIRST_CENTRE + posY, column FIRST_CENTRE + posX)."""
    return render_rows(classes) if len(classes) >= ROWS_FROM else render_windows(classes)


def read_deepmind_npz(path: Path) -> tuple[Tensor, Tensor]:
    """DeepMind's file (or one with its keys): images (N, 1, 64, 64) uint8 0/255 and factor
    classes (N, 6) int64."""
    try:
        with np.load(path) as archive:  # allow_pickle stays off: metadata is never read
            images = archive["imgs"]
            classes = archive["latents_classes"]
    except Exception as err:  # a truncated download, another file under this name
        raise DataFileError(
            f"{path} cannot be read as DeepMind's dSprites file ({type(err).__name__}: {err}). "
            "Delete it (the images are then generated), or download it again."
        ) from err
    sizes = np.asarray(FACTOR_SIZES)
    if (
        images.ndim != 3
        or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)
        or classes.shape != (len(images), len(FACTOR_SIZES))
        or (classes < 0).any()
        or (classes >= sizes).any()
        or images.max(initial=0) > 1
    ):
        raise DataFileError(
            f"{path} is not DeepMind's dSprites file: expected 'imgs' (N, 64, 64) of 0/1 and "
            f"'latents_classes' (N, 6) within {FACTOR_SIZES}, found {images.shape} and "
            f"{classes.shape}. Delete it (the images are then generated), or replace it."
        )
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).mul_(255)
    return pixels.unsqueeze(1), torch.from_numpy(classes.astype(np.int64))


class DSpritesDataModule(MNISTDataModule):
    """dSprites images (binary, 0/1) with their ground-truth factors.

    The images are generated (see the module docstring), or read from DeepMind's
    ``dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz`` when it is in ``root`` or a
    ``search_dirs`` folder. ``subset`` keeps that many images, drawn uniformly from the whole
    set with a fixed seed (small runs and tests); only those are generated.

    dSprites has no official split. Here ``test_size`` images are held out with a fixed seed
    (the same for every run), ``val_size`` more are drawn from the rest with ``split_seed``,
    and the remaining images train. The label of an image is its shape; :meth:`factors` gives
    every factor class of a split, aligned with its images, for disentanglement metrics.
    The pixels are 0 or 1, so every ``binarize`` setting leaves them unchanged.
    """

    def __init__(
        self,
        root: str = "data",
        search_dirs: list[str] | None = None,
        subset: PositiveInt | None = None,
        val_size: PositiveInt = 10000,
        test_size: PositiveInt = 10000,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = "dynamic",
        loader: Literal["tensor", "torch"] = "tensor",
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 42,
        image_shape: ImageShape = IMAGE_SHAPE,
        hflip: bool = False,
        num_classes: NonNegativeInt | None = 3,
        dataset: Literal["dsprites"] = "dsprites",
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        if tuple(image_shape) != IMAGE_SHAPE:
            raise ValueError(f"data.image_shape={list(image_shape)}: dSprites is [1, 64, 64].")
        super().__init__(
            dataset=dataset,
            root=root,
            search_dirs=search_dirs,
            download=False,  # generated, never downloaded
            val_size=val_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            binarize=binarize,
            loader=loader,
            num_workers=num_workers,
            seed=seed,
            split_seed=split_seed,
            image_shape=image_shape,
            verify_checksums=False,  # DeepMind publishes no checksum; its file is checked
            hflip=hflip,
            num_classes=num_classes,
            steps_per_batch=steps_per_batch,
        )
        self.subset, self.test_size = subset, test_size
        self.split_factors: dict[str, Tensor] = {}

    def storage_of(self, info: DatasetInfo) -> ArchiveStorage:
        if info.archive is None:
            raise ValueError(f"data.dataset={info.name!r} is not an archive dataset")
        return info.archive

    @property
    def folders(self) -> list[Path]:
        return [self.root, *self.search_dirs]

    def deepmind_file(self) -> Path | None:
        for folder in self.folders:
            if (folder / self.storage.file_name).is_file():
                return folder / self.storage.file_name
        return None

    def prepare_data(self) -> None:
        """Nothing to fetch: the images are generated in setup (a few seconds)."""

    def factors(self, split: str) -> Tensor:
        """The factor classes (N, 6) of ``split``'s images, in order (int64, on the CPU):
        columns :data:`FACTOR_NAMES`; :func:`factor_values` turns them into values."""
        if not self.split_factors:
            self.setup()
        return self.split_factors[split]

    def split_indices(self, total: int) -> dict[str, Tensor]:
        """Indices into the whole set (``total`` images) of each split."""
        pool = torch.arange(total)
        if self.subset is not None and self.subset < total:
            chosen = torch.randperm(total, generator=seeded_generator(DATA_SEED))
            pool = chosen[: self.subset].sort().values
        held_out = self.test_size + self.val_size
        if held_out >= len(pool):
            raise ConfigError(
                f"data.test_size={self.test_size} + data.val_size={self.val_size} leaves no "
                f"training image out of {len(pool)} (data.subset={self.subset}): make them "
                "smaller or the subset larger."
            )
        fixed = torch.randperm(len(pool), generator=seeded_generator(DATA_SEED))
        test, rest = pool[fixed[: self.test_size]], pool[fixed[self.test_size :]]
        seeded = torch.randperm(len(rest), generator=seeded_generator(self.split_seed))
        return {
            "train": rest[seeded[self.val_size :]],
            "val": rest[seeded[: self.val_size]],
            "test": test,
        }

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Images (N, 1, 64, 64) uint8 0/255 and shape labels per split, in host memory."""
        npz = self.deepmind_file()
        if npz is not None:
            all_images, all_classes = read_deepmind_npz(npz)
            total = len(all_images)
            self.sources = dict.fromkeys(("train", "val", "test"), npz)
            rank_zero_info(f"dSprites: DeepMind's file {npz}")
        else:
            total = NUM_IMAGES
        splits = {}
        for split, indices in self.split_indices(total).items():
            if npz is not None:
                images, classes = all_images[indices], all_classes[indices]
            else:
                classes = factor_classes(indices)
                images = render(classes)
            self.split_factors[split] = classes
            splits[split] = (images, classes[:, 1].clone())
        return splits
