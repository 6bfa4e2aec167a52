"""The visual callbacks, read back from real event files.

A tiny trained run (the session fixtures ``visuals_run``, 5-D latent space with every visual
callback, and ``manifold_run``, 2-D) checks each image against the model that drew it. A
hand-made module with known posteriors (``BandVAE``) checks orderings and counts exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.events import (
    event_folder,
    image_tags,
    last_image,
    projector_embeddings,
    scalars,
    written_histograms,
    written_images,
)
from helpers.runs import TrainedRun
from vae_lightning.callbacks import (
    LatentInterpolations,
    LatentManifold,
    LatentTraversals,
    PosteriorCollapse,
)
from vae_lightning.callbacks.base import is_due
from vae_lightning.data.registry import class_names
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models import gaussian
from vae_lightning.models.diagnostics import active_units
from vae_lightning.models.priors import MixtureOfGaussians, Prior, StandardNormal
from vae_lightning.signatures import argument_problems

TILE = 30  # make_grid: 28-pixel images with 2 pixels of padding


def as_logged(images: Tensor) -> np.ndarray:
    """(N, 1, 28, 28) images in [0, 1] as TensorBoard stores them (x * 255, truncated)."""
    return (images[:, 0].clamp(0, 1) * 255).numpy().astype(np.uint8)


def tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = 2 + row * TILE, 2 + col * TILE
    return grid[top : top + 28, left : left + 28]


def assert_tiles_equal(grid: np.ndarray, row: int, expected: np.ndarray) -> None:
    """Tile by tile along one row, to within the one grey level PNG quantisation costs."""
    for col, image in enumerate(expected):
        diff = np.abs(tile(grid, row, col).astype(int) - image.astype(int)).max()
        assert diff <= 1, f"tile ({row}, {col}) differs by {diff} grey levels"


def final_model_and_val_split(run: TrainedRun) -> tuple[VAELitModule, Tensor, Tensor]:
    """The weights the callbacks saw at the last epoch and the validation split in order."""
    model = VAELitModule.load_from_checkpoint(run.dir / "checkpoints" / "last.ckpt").eval()
    datamodule = instantiate(run.cfg.data)
    datamodule.setup()
    images, labels = datamodule.splits["val"]
    return model, images.float() / 255, labels


# -------------------------------------------------------------------- a trained model
def test_every_visual_tag_is_logged_each_epoch_with_its_grid_shape(visuals_run):
    log_dir = visuals_run.dir / "tensorboard"
    shapes = {
        "val/reconstructions": (2 + 2 * TILE, 2 + 8 * TILE),
        "val/samples": (2 + 8 * TILE, 2 + 8 * TILE),
        "val/traversals": (2 + 3 * TILE, 2 + 5 * TILE),  # 3 dims x 5 values
        "val/interpolations": (2 + 3 * TILE, 2 + (4 + 2) * TILE),  # 3 pairs, a + 4 + b
        "val/latent_pca": (500, 700),  # a 7 x 5 inch figure at 100 dpi
    }
    for tag, shape in shapes.items():
        logged = written_images(log_dir, tag)
        assert len(logged) == 2, tag  # every epoch
        assert {(image.height, image.width) for image in logged} == {shape}, tag
    assert "val/manifold" not in image_tags(visuals_run.dir)  # latent_dim = 5
    assert len(written_histograms(log_dir, "val/kl_per_dim")) == 2
    assert len(scalars(visuals_run.dir)["val/active_units"]) == 2


def test_traversal_rows_vary_the_dimensions_in_decreasing_kl_order(visuals_run):
    model, images, _ = final_model_and_val_split(visuals_run)
    with torch.no_grad():
        mu, logvar = model.net.encode(images[:100])
        kl = gaussian.kl_standard_normal_per_dim(mu, logvar).mean(dim=0)
        order = kl.argsort(descending=True)[:3].tolist()
        grid = last_image(visuals_run.dir, "val/traversals")
        for row, dim in enumerate(order):
            z = mu[0].repeat(5, 1)
            z[:, dim] = torch.linspace(-3, 3, 5)
            assert_tiles_equal(grid, row, as_logged(model.decode_mean(z)))


def test_interpolation_rows_go_from_image_a_to_image_b(visuals_run):
    model, images, _ = final_model_and_val_split(visuals_run)
    grid = last_image(visuals_run.dir, "val/interpolations")
    with torch.no_grad():
        for pair in range(3):
            a, b = images[2 * pair], images[2 * pair + 1]
            mu, _ = model.net.encode(torch.stack([a, b]))
            path = torch.stack([torch.lerp(mu[0], mu[1], t) for t in torch.linspace(0, 1, 4)])
            expected = torch.cat([a[None], model.decode_mean(path), b[None]])
            assert_tiles_equal(grid, pair, as_logged(expected))


def test_projector_holds_the_posterior_means_with_labels_and_sprites(visuals_run):
    model, images, labels = final_model_and_val_split(visuals_run)
    log_dir = event_folder(visuals_run.dir / "tensorboard")  # the run's TensorBoard folder
    embeddings = projector_embeddings(log_dir)
    assert len(embeddings) == 2  # one per epoch
    last = embeddings[-1]
    assert last.tensor_name.startswith("val/latent")

    means = np.loadtxt(log_dir / last.tensor_path, delimiter="\t", ndmin=2)
    assert means.shape == (64, 5)
    with torch.no_grad():
        expected, _ = model.net.encode(images[:64])
    np.testing.assert_allclose(means, expected.numpy(), atol=1e-5)

    rows = (log_dir / last.metadata_path).read_text().splitlines()
    assert rows[0] == "label\tclass"
    assert [row.split("\t") for row in rows[1:]] == [
        [str(label), class_names("mnist")[label]] for label in labels[:64].tolist()
    ]

    sprite = Image.open(log_dir / last.sprite.image_path)
    assert sprite.size == (8 * 28, 8 * 28)  # ceil(sqrt(64)) images a side, no padding
    assert list(last.sprite.single_image_dim) == [28, 28]


def test_kl_histogram_and_active_units_match_the_model(visuals_run):
    model, images, _ = final_model_and_val_split(visuals_run)
    with torch.no_grad():
        mu, logvar = model.net.encode(images[:100])
    kl = gaussian.kl_standard_normal_per_dim(mu, logvar).mean(dim=0)
    log_dir = visuals_run.dir / "tensorboard"
    histogram = written_histograms(log_dir, "val/kl_per_dim")[-1].histogram_value
    assert histogram.num == 5
    assert histogram.sum == pytest.approx(float(kl.sum()), rel=1e-5)
    assert histogram.max == pytest.approx(float(kl.max()), rel=1e-5)
    logged = scalars(visuals_run.dir)["val/active_units"][-1]
    assert logged == active_units(mu) == visuals_run.metrics["val/active_units"]


def test_manifold_is_drawn_for_a_2d_latent_space(manifold_run):
    (image,) = written_images(manifold_run.dir / "tensorboard", "val/manifold")
    assert (image.height, image.width) == (2 + 20 * TILE, 2 + 20 * TILE)


# ------------------------------------------------- a hand-made model, known posteriors
class BandNet(nn.Module):
    """Encoder with known posteriors: mu_d = scale_d * x[0, 0, 0], fixed log-variances."""

    def __init__(
        self, scale: list[float], logvar: list[float], prior: Prior | None = None
    ) -> None:
        super().__init__()
        self.latent_dim = len(scale)
        self.prior = prior or StandardNormal(len(scale))
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("logvar", torch.tensor(logvar))

    def encode_code(self, x: Tensor) -> tuple[Tensor, Tensor]:
        signal = x[:, 0, 0, 0:1]
        return signal * self.scale, self.logvar.expand(len(x), -1)


def band_image(z: Tensor) -> Tensor:
    """Decoder: dimension d paints rows 3d..3d+2 with (z_d + 3) / 6, z in [-3, 3] -> [0, 1]."""
    images = torch.zeros(len(z), 1, 28, 28)
    for dim in range(z.shape[1]):
        images[:, 0, 3 * dim : 3 * dim + 3, :] = ((z[:, dim] + 3) / 6).clamp(0, 1)[:, None, None]
    return images


class BandVAE(L.LightningModule):
    def __init__(
        self, scale: list[float], logvar: list[float], prior: Prior | None = None
    ) -> None:
        super().__init__()
        self.net = BandNet(scale, logvar, prior)

    def decode_mean(self, z: Tensor) -> Tensor:
        return band_image(z)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass


def validate(module: L.LightningModule, callbacks: list[L.Callback], log_dir: Path) -> dict:
    """One validation pass over 20 images whose pixel (0, 0) is 1, 0, 1, 0, ..."""
    images = torch.zeros(20, 1, 28, 28)
    images[0::2, 0, 0, 0] = 1.0
    loader = DataLoader(TensorDataset(images, torch.arange(20) % 10), batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=TensorBoardLogger(log_dir, name="", version="", default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, dataloaders=loader)
    return metrics


# KL per dimension over the 20 images (signal 1 for half of them): 0.5 (E[mu^2] + var - 1 -
# log var) = 0, 1.568, 0.000625, 0.434; the posterior-mean variances are 0, 1.05, 0.00066,
# 0.263 (unbiased, n = 20), so two units are active.
SCALE, LOGVAR = [0.0, 2.0, 0.05, 1.0], [0.0, -2.0, 0.0, -1.0]


def closed_form_kl() -> list[float]:
    return [0.5 * (s**2 / 2 + math.exp(lv) - 1 - lv) for s, lv in zip(SCALE, LOGVAR, strict=True)]


def test_traversal_rows_follow_kl_order_on_a_model_with_known_posteriors(tmp_path):
    kl = closed_form_kl()
    assert sorted(range(4), key=lambda d: -kl[d]) == [1, 3, 2, 0]
    traversals = LatentTraversals(num_dims=3, num_steps=5, num_images=20)
    validate(BandVAE(SCALE, LOGVAR), [traversals, LatentManifold()], tmp_path)
    assert "val/manifold" not in image_tags(tmp_path)  # 4-D latent space
    grid = last_image(tmp_path, "val/traversals")
    centre = torch.tensor(SCALE)  # image 0 has signal 1
    for row, dim in enumerate([1, 3, 2]):  # dimension 0 (KL 0) is not shown: K = 3
        z = centre.repeat(5, 1)
        z[:, dim] = torch.linspace(-3, 3, 5)
        assert_tiles_equal(grid, row, as_logged(band_image(z)))


def test_active_units_and_kl_histogram_on_a_model_that_ignores_dimensions(tmp_path):
    metrics = validate(BandVAE(SCALE, LOGVAR), [PosteriorCollapse(num_images=20)], tmp_path)
    assert metrics["val/active_units"] == 2
    assert scalars(tmp_path)["val/active_units"][-1] == 2
    histogram = written_histograms(tmp_path, "val/kl_per_dim")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sum(closed_form_kl()), rel=1e-5)
    assert histogram.min == 0.0


def test_with_a_learned_prior_rows_follow_posterior_mean_variance_and_no_kl_histogram(tmp_path):
    """A mixture prior has no KL per dimension: the traversals rank by the variance of the
    posterior means (0, 1.05, 0.00066, 0.263), the histogram is left out, the active units
    stay. Dimension 0 carries no information but a small variance: its KL to N(0, 1), 1.51,
    would have ranked it second."""
    traversals = LatentTraversals(num_dims=3, num_steps=5, num_images=20)
    collapse = PosteriorCollapse(num_images=20)
    logvar = [-4.0, *LOGVAR[1:]]
    module = BandVAE(SCALE, logvar, MixtureOfGaussians(4, num_components=3))
    metrics = validate(module, [traversals, collapse], tmp_path)
    assert metrics["val/active_units"] == 2
    with pytest.raises(KeyError, match="val/kl_per_dim"):  # never written
        written_histograms(tmp_path, "val/kl_per_dim")
    grid = last_image(tmp_path, "val/traversals")
    centre = torch.tensor(SCALE)
    for row, dim in enumerate([1, 3, 2]):
        z = centre.repeat(5, 1)
        z[:, dim] = torch.linspace(-3, 3, 5)
        assert_tiles_equal(grid, row, as_logged(band_image(z)))


def test_manifold_tiles_decode_gaussian_quantiles(tmp_path):
    manifold = LatentManifold(grid_size=3, quantile_range=(0.05, 0.95))
    validate(BandVAE([1.0, 0.5], [0.0, 0.0]), [manifold], tmp_path)
    grid = last_image(tmp_path, "val/manifold")
    assert grid.shape == (2 + 3 * TILE, 2 + 3 * TILE)
    q = [NormalDist().inv_cdf(p) for p in (0.05, 0.5, 0.95)]
    for row in range(3):
        z = torch.tensor([[q[col], q[2 - row]] for col in range(3)])  # z2 up, z1 right
        assert_tiles_equal(grid, row, as_logged(band_image(z)))


def test_spherical_interpolation_is_an_option(tmp_path):
    interpolations = LatentInterpolations(num_pairs=2, num_steps=3, method="spherical")
    validate(BandVAE([1.0, 2.0], [0.0, 0.0]), [interpolations], tmp_path)
    (image,) = written_images(tmp_path, "val/interpolations")
    assert (image.height, image.width) == (2 + 2 * TILE, 2 + 5 * TILE)


# ------------------------------------------------------------------ schedule and errors
@pytest.mark.parametrize(
    ("epoch", "sanity", "expected"),
    [(0, False, True), (1, False, False), (3, False, True), (9, False, True), (0, True, False)],
)
def test_visuals_run_every_n_epochs_and_at_the_last(epoch, sanity, expected):
    trainer = SimpleNamespace(current_epoch=epoch, max_epochs=10, sanity_checking=sanity)
    assert is_due(trainer, every_n_epochs=3) is expected


def test_bad_callback_settings_fail_with_what_to_do():
    # A bad choice is declared in the signature, which the config check reads.
    (problem,) = argument_problems(LatentInterpolations, {"method": "cubic"})
    assert problem.parameter == "method" and "'linear' or 'spherical'" in problem.reason
    with pytest.raises(ValueError, match="at least 1.*~callbacks"):
        LatentTraversals(every_n_epochs=0)
    with pytest.raises(ValueError, match="image_index=300"):
        LatentTraversals(image_index=300, num_images=256)


def test_visual_callbacks_compose_from_the_config(compose_train):
    cfg: DictConfig = compose_train(["callbacks.interpolations.method=spherical"])
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    assert callbacks["interpolations"].method == "spherical"
    assert callbacks["latent_space"].every_n_epochs == 5
    assert callbacks["manifold"].latents.shape == (400, 2)
