"""data=dsprites: the generator against DeepMind's factor layout and an independent per-pixel
rasteriser, the splits and their factors, DeepMind's npz when present, and a real run."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir

from helpers.archives import write_dsprites_npz
from helpers.events import image_tags, last_rgb_image
from helpers.paths import CONF_DIR
from helpers.runs import output_overrides
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import DataFileError, DSpritesDataModule
from vae_lightning.data.dsprites import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    NUM_IMAGES,
    factor_classes,
    factor_values,
    render,
    render_rows,
    render_windows,
    sprite_canvases,
)
from vae_lightning.errors import ConfigError
from vae_lightning.train import train

SMALL = {"subset": 600, "val_size": 100, "test_size": 100}


def test_the_factors_follow_deepminds_file_layout():
    assert FACTOR_NAMES == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert NUM_IMAGES == 737_280 == 3 * 6 * 40 * 32 * 32
    indices = np.array([0, 1, 31, 32, 1023, 1024, 40 * 1024, 245_759, 245_760, NUM_IMAGES - 1])
    classes = factor_classes(torch.from_numpy(indices)).numpy()
    assert np.array_equal(classes, np.stack(np.unravel_index(indices, FACTOR_SIZES), axis=1))
    # DeepMind's latents_values: color 1; shape 1..3; scale linspace(0.5, 1, 6); orientation
    # linspace(0, 2 pi, 40); positions linspace(0, 1, 32).
    values = factor_values(torch.tensor([[0, 2, 5, 39, 31, 0], [0, 0, 1, 1, 1, 16]])).numpy()
    expected = [[1, 3, 1.0, 2 * math.pi, 1.0, 0.0], [1, 1, 0.6, 2 * math.pi / 39, 1 / 31, 16 / 31]]
    np.testing.assert_allclose(values, expected, rtol=1e-12)


def reference_pixel(shape: int, scale: float, angle: float, dx: float, dy: float) -> bool:
    """Is the pixel at (dx right, dy down) of the sprite's centre inside the shape? Written
    out per pixel, apart from the vectorised code: the shape's own frame is the image's turned
    anticlockwise by ``angle``, in units of 10 * scale pixels."""
    up = -dy
    x = (dx * math.cos(angle) + up * math.sin(angle)) / (10 * scale)
    y = (up * math.cos(angle) - dx * math.sin(angle)) / (10 * scale)
    if shape == 0:
        return max(abs(x), abs(y)) <= 1
    if shape == 1:
        return x * x + 4 * y * y <= 1
    x, y = 1.2 * x, 1.2 * y + 0.118
    return (x * x + y * y - 1) ** 3 <= x * x * y**3


def test_images_match_a_per_pixel_rasteriser_at_their_positions():
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(rng.integers(0, NUM_IMAGES, size=12))
    classes = factor_classes(indices)
    images = render(classes)
    assert images.shape == (12, 1, 64, 64) and images.dtype == torch.uint8
    assert set(images.unique().tolist()) == {0, 255}
    for image, (_, shape, scale, angle, pos_x, pos_y) in zip(
        images, factor_values(classes).tolist(), strict=True
    ):
        centre_x, centre_y = 16 + round(pos_x * 31), 16 + round(pos_y * 31)
        expected = [
            [
                reference_pixel(int(shape) - 1, scale, angle, col - centre_x, row - centre_y)
                for col in range(64)
            ]
            for row in range(64)
        ]
        assert torch.equal(image[0] == 255, torch.tensor(expected))


def test_both_ways_of_rendering_give_the_same_images():
    indices = torch.from_numpy(np.random.default_rng(1).integers(0, NUM_IMAGES, size=3000))
    classes = factor_classes(indices)
    assert torch.equal(render_rows(classes), render_windows(classes))


def test_areas_follow_the_shapes_closed_forms():
    """Square at orientation 0: (2 floor(10 s) + 1)^2 pixels; ellipse ~ pi * 10 s * 5 s."""
    for scale_class, scale in enumerate(np.linspace(0.5, 1.0, 6)):
        square = render(torch.tensor([[0, 0, scale_class, 0, 10, 10]]))
        assert int((square > 0).sum()) == (2 * math.floor(10 * scale + 1e-9) + 1) ** 2
        ellipse = render(torch.tensor([[0, 1, scale_class, 7, 10, 10]]))
        area = math.pi * 10 * scale * 5 * scale
        assert abs(int((ellipse > 0).sum()) - area) < 0.1 * area


def test_moving_one_position_step_moves_the_image_one_pixel():
    base = torch.tensor([[0, 2, 3, 11, 5, 9]])
    right, down = base.clone(), base.clone()
    right[0, 4] += 1
    down[0, 5] += 1
    image = render(base)
    assert torch.equal(render(right), image.roll(1, dims=-1))
    assert torch.equal(render(down), image.roll(1, dims=-2))
    assert torch.equal(
        render(torch.tensor([[0, 2, 3, 39, 5, 9]])), render(torch.tensor([[0, 2, 3, 0, 5, 9]]))
    )


def test_how_many_sprites_differ_as_docs_data_md_says():
    """0 and 2 pi, and the square's and ellipse's symmetries at 64x64, repeat 81 sprites."""
    sprites = sprite_canvases().flatten(1)
    assert len(sprites) == 720 and len(torch.unique(sprites, dim=0)) == 639
    hearts = sprites[480:]  # the heart has no symmetry: only 0 and 2 pi coincide
    assert len(torch.unique(hearts, dim=0)) == 240 - 6


def small_module(**kwargs) -> DSpritesDataModule:
    return DSpritesDataModule(**{**SMALL, **kwargs})


def test_splits_are_disjoint_and_their_factors_are_those_of_their_images(tmp_path):
    module = small_module(root=str(tmp_path))
    module.setup("fit")
    sizes = {split: len(images) for split, (images, _) in module.splits.items()}
    assert sizes == {"train": 400, "val": 100, "test": 100}
    rows = {split: {tuple(r) for r in module.factors(split).tolist()} for split in sizes}
    assert sum(len(r) for r in rows.values()) == 600  # no image in two splits
    for split, (images, labels) in module.splits.items():
        factors = module.factors(split)
        assert factors.shape == (sizes[split], 6)
        assert torch.equal(images, render(factors))
        assert torch.equal(labels, factors[:, 1])
    # The test split is held out with a fixed seed: another split_seed moves validation only.
    other = small_module(root=str(tmp_path), split_seed=7)
    other.setup("fit")
    assert torch.equal(other.factors("test"), module.factors("test"))
    assert not torch.equal(other.factors("val"), module.factors("val"))


def test_too_large_held_out_splits_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.test_size=300 \\+ data.val_size=300"):
        small_module(root=str(tmp_path), test_size=300, val_size=300).setup("fit")


def test_deepminds_file_in_the_root_is_read_instead(tmp_path):
    indices = np.arange(0, NUM_IMAGES, 997)[:700]
    npz = write_dsprites_npz(tmp_path / "dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz", indices)
    module = DSpritesDataModule(root=str(tmp_path), val_size=100, test_size=100)
    module.setup("fit")
    assert module.sources["train"] == npz
    assert sum(len(images) for images, _ in module.splits.values()) == 700
    for split, (images, _) in module.splits.items():
        assert torch.equal(images, render(module.factors(split)))  # 0/1 read as 0/255


def test_a_file_under_deepminds_name_that_is_not_it_is_refused(tmp_path):
    bad = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz"
    np.savez(bad, imgs=np.zeros((10, 28, 28), np.uint8), latents_classes=np.zeros((10, 6)))
    with pytest.raises(DataFileError, match="is not DeepMind's dSprites file"):
        DSpritesDataModule(root=str(tmp_path), val_size=2, test_size=2).setup("fit")
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataFileError, match="cannot be read as DeepMind's dSprites file"):
        DSpritesDataModule(root=str(tmp_path), val_size=2, test_size=2).setup("fit")


def test_a_short_training_run_on_a_subset(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched(
            "train",
            [
                "data=dsprites",
                *(f"data.{key}={value}" for key, value in SMALL.items()),
                *output_overrides(tmp_path),
                "debug=fast",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "model.latent_dim=4",
                "~callbacks.progress_bar",
                "callbacks.latent_space.num_images=50",
                "callbacks.traversals.num_images=50",
                "callbacks.posterior_collapse.num_images=50",
            ],
        )
        metrics = train(cfg)
    assert math.isfinite(metrics["val/elbo"]) and math.isfinite(metrics["test/elbo"])
    assert "val/reconstructions" in image_tags(tmp_path)
    grid = last_rgb_image(tmp_path, "val/reconstructions")
    assert grid.shape == (2 + 2 * 66, 2 + 8 * 66, 3)  # 8 inputs above 8 reconstructions


@pytest.mark.slow
def test_the_default_data_module_holds_every_image_once(tmp_path):
    module = DSpritesDataModule(root=str(tmp_path))
    module.setup("fit")
    sizes = {split: len(images) for split, (images, _) in module.splits.items()}
    assert sizes == {"train": NUM_IMAGES - 20_000, "val": 10_000, "test": 10_000}
    index = torch.cat([module.factors(split) for split in sizes])
    flat = index @ torch.tensor([math.prod(FACTOR_SIZES[k + 1 :]) for k in range(6)])
    assert torch.equal(flat.sort().values, torch.arange(NUM_IMAGES))


@pytest.mark.slow
def test_the_whole_set_is_generated_in_seconds():
    start = time.perf_counter()
    classes = factor_classes(torch.arange(NUM_IMAGES))
    images = render(classes)
    seconds = time.perf_counter() - start
    assert images.shape == (NUM_IMAGES, 1, 64, 64)
    assert seconds < 60, f"{seconds:.1f} s"
    assert torch.equal(images[::997], render_windows(classes[::997]))
    # Every image holds one sprite and none touches the border (the 16-pixel margins).
    assert bool((images.amax(dim=(1, 2, 3)) == 255).all())
    border = torch.cat(
        [images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]], -1
    )
    assert int(border.max()) == 0
