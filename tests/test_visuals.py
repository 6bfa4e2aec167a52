"""The visual callbacks, the HParams tab and the report, read back from real event files.

Two tiny runs are trained once for the whole module with the real `train()` and the real
configs (a 5-D latent space with every visual callback, a 2-D one for the manifold). A
hand-made module with known posteriors (`BandVAE`) checks orderings and counts exactly.
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from hydra import initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.data import idx_data
from helpers.events import hparams_session_groups
from helpers.paths import CONF_DIR
from helpers.runs import run_module
from vae_lightning.callbacks import (
    LatentInterpolations,
    LatentManifold,
    LatentTraversals,
    PosteriorCollapse,
)
from vae_lightning.callbacks.base import is_due
from vae_lightning.configs import compose_as_launched
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models import gaussian
from vae_lightning.models.diagnostics import active_units
from vae_lightning.report import write_report
from vae_lightning.train import train

TILE = 30  # make_grid: 28-pixel images with 2 pixels of padding


@pytest.fixture(scope="module")
def run5(tmp_path_factory, idx_root) -> SimpleNamespace:
    """Two epochs of a 5-D MLP VAE with every visual callback, on generated IDX data."""
    return train_run(
        tmp_path_factory.mktemp("run5"),
        idx_root,
        [
            "trainer.max_epochs=2",
            "model.latent_dim=5",
            "callbacks.traversals.num_dims=3",
            "callbacks.traversals.num_steps=5",
            "callbacks.traversals.num_images=100",
            "callbacks.interpolations.num_pairs=3",
            "callbacks.interpolations.num_steps=4",
            "callbacks.latent_space.num_images=64",
            "callbacks.latent_space.every_n_epochs=1",
            "callbacks.posterior_collapse.num_images=100",
        ],
    )


@pytest.fixture(scope="module")
def run2(tmp_path_factory, idx_root) -> SimpleNamespace:
    """One epoch of a 2-D MLP VAE, for the manifold."""
    return train_run(
        tmp_path_factory.mktemp("run2"),
        idx_root,
        ["model.latent_dim=2", "test=false", "~callbacks.latent_space", "~callbacks.traversals"],
    )


def train_run(out: Path, data_root: Path, overrides: list[str]) -> SimpleNamespace:
    base = [
        "debug=fast",
        *idx_data(data_root),
        f"paths.output_dir={out}",
        f"paths.log_dir={out}",
        f"paths.data_dir={out / 'data'}",
        f"hydra.run.dir={out}",
        "~callbacks.progress_bar",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched("train", [*base, *overrides])
        metrics = train(cfg)
    return SimpleNamespace(dir=out, cfg=cfg, metrics=metrics, events=load_events(out))


def load_events(run_dir: Path) -> EventAccumulator:
    guidance = {"images": 0, "scalars": 0, "histograms": 0}
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=guidance)
    events.Reload()
    return events


def image_array(event) -> np.ndarray:
    """An image event as an (H, W) uint8 array (the grids are grey: one channel suffices)."""
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))[..., 0]


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


def final_model_and_val_split(run: SimpleNamespace) -> tuple[VAELitModule, Tensor, Tensor]:
    """The weights the callbacks saw at the last epoch and the validation split in order."""
    model = VAELitModule.load_from_checkpoint(run.dir / "checkpoints" / "last.ckpt").eval()
    datamodule = instantiate(run.cfg.data)
    datamodule.setup()
    images, labels = datamodule.splits["val"]
    return model, images.float() / 255, labels


# -------------------------------------------------------------------- a trained model
def test_every_visual_tag_is_logged_each_epoch_with_its_grid_shape(run5):
    events = run5.events
    shapes = {
        "val/reconstructions": (2 + 2 * TILE, 2 + 8 * TILE),
        "val/samples": (2 + 8 * TILE, 2 + 8 * TILE),
        "val/traversals": (2 + 3 * TILE, 2 + 5 * TILE),  # 3 dims x 5 values
        "val/interpolations": (2 + 3 * TILE, 2 + (4 + 2) * TILE),  # 3 pairs, a + 4 + b
        "val/latent_pca": (500, 700),  # a 7 x 5 inch figure at 100 dpi
    }
    for tag, shape in shapes.items():
        logged = events.Images(tag)
        assert len(logged) == 2, tag  # every epoch
        assert {(image.height, image.width) for image in logged} == {shape}, tag
    assert "val/manifold" not in events.Tags()["images"]  # latent_dim = 5
    assert len(events.Histograms("val/kl_per_dim")) == 2
    assert len(events.Scalars("val/active_units")) == 2


def test_traversal_rows_vary_the_dimensions_in_decreasing_kl_order(run5):
    model, images, _ = final_model_and_val_split(run5)
    with torch.no_grad():
        mu, logvar = model.net.encode(images[:100])
        order = (
            gaussian.kl_standard_normal_per_dim(mu, logvar)
            .mean(dim=0)
            .argsort(descending=True)[:3]
            .tolist()
        )
        grid = image_array(run5.events.Images("val/traversals")[-1])
        for row, dim in enumerate(order):
            z = mu[0].repeat(5, 1)
            z[:, dim] = torch.linspace(-3, 3, 5)
            assert_tiles_equal(grid, row, as_logged(model.decode_mean(z)))


def test_interpolation_rows_go_from_image_a_to_image_b(run5):
    model, images, _ = final_model_and_val_split(run5)
    grid = image_array(run5.events.Images("val/interpolations")[-1])
    with torch.no_grad():
        for pair in range(3):
            a, b = images[2 * pair], images[2 * pair + 1]
            mu, _ = model.net.encode(torch.stack([a, b]))
            path = torch.stack([torch.lerp(mu[0], mu[1], t) for t in torch.linspace(0, 1, 4)])
            expected = torch.cat([a[None], model.decode_mean(path), b[None]])
            assert_tiles_equal(grid, pair, as_logged(expected))


def test_projector_holds_the_posterior_means_with_labels_and_sprites(run5):
    model, images, labels = final_model_and_val_split(run5)
    log_dir = run5.dir / "tensorboard"
    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert len(config.embeddings) == 2  # one per epoch
    last = config.embeddings[-1]
    assert last.tensor_name.startswith("val/latent")

    means = np.loadtxt(log_dir / last.tensor_path, delimiter="\t", ndmin=2)
    assert means.shape == (64, 5)
    with torch.no_grad():
        expected, _ = model.net.encode(images[:64])
    np.testing.assert_allclose(means, expected.numpy(), atol=1e-5)

    rows = (log_dir / last.metadata_path).read_text().splitlines()
    assert rows[0] == "label\tclass"
    assert [int(row.split("\t")[0]) for row in rows[1:]] == labels[:64].tolist()

    sprite = Image.open(log_dir / last.sprite.image_path)
    assert sprite.size == (8 * 28, 8 * 28)  # ceil(sqrt(64)) images a side, no padding
    assert list(last.sprite.single_image_dim) == [28, 28]


def test_kl_histogram_and_active_units_match_the_model(run5):
    model, images, _ = final_model_and_val_split(run5)
    with torch.no_grad():
        mu, logvar = model.net.encode(images[:100])
    kl = gaussian.kl_standard_normal_per_dim(mu, logvar).mean(dim=0)
    histogram = run5.events.Histograms("val/kl_per_dim")[-1].histogram_value
    assert histogram.num == 5
    assert histogram.sum == pytest.approx(float(kl.sum()), rel=1e-5)
    assert histogram.max == pytest.approx(float(kl.max()), rel=1e-5)
    logged = run5.events.Scalars("val/active_units")[-1].value
    assert logged == active_units(mu) == run5.metrics["val/active_units"]


def test_manifold_is_drawn_for_a_2d_latent_space(run2):
    (image,) = run2.events.Images("val/manifold")
    assert (image.height, image.width) == (2 + 20 * TILE, 2 + 20 * TILE)


# ------------------------------------------------------------------------ HParams tab
def test_hparams_tab_lists_the_flattened_config_with_the_final_metrics(run5):
    (group,) = hparams_session_groups(run5.dir / "tensorboard")
    hparams = {
        name: value.number_value if value.HasField("number_value") else value.string_value
        for name, value in group.hparams.items()
    }
    assert hparams["model"] == "mlp" and hparams["optimizer"] == "adam"  # group choices
    assert hparams["model.latent_dim"] == 5
    assert hparams["model.beta"] == 1.0
    assert hparams["optimizer.lr"] == pytest.approx(1e-3)
    assert hparams["data.batch_size"] == 128
    assert hparams["seed"] == 12345
    assert hparams["model.net.hidden_dims"] == "[400]"
    excluded = ("paths", "callbacks", "logger", "hydra", "data.root", "trainer.default_root")
    assert not [name for name in hparams if name.startswith(excluded)]
    assert "model._recursive_" not in hparams
    assert not [name for name in hparams if name.endswith("_target_")]

    values = {metric.name.tag: metric.value for metric in group.metric_values}
    assert set(values) == {"val/elbo", "val/kl", "val/active_units"}  # no test metric
    for name, value in values.items():
        assert value == pytest.approx(run5.metrics[name], rel=1e-6), name
    # The final values were not logged a second time at a later step.
    steps = [event.step for event in run5.events.Scalars("val/elbo")]
    assert len(steps) == len(set(steps)) == 2


# ------------------------------------------------------------------------------ report
def assert_png_not_blank(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, path.name
    assert pixels.std() > 5 and pixels.min() < 100 < pixels.max(), f"{path.name} looks blank"


REPORT_FILES = ("loss_curves.png", "samples.png", "reconstructions.png", "latent_pca.png")


def test_report_is_written_at_the_end_of_training(run5):
    report = run5.dir / "report"
    for name in REPORT_FILES:
        assert_png_not_blank(report / name)
    summary = (report / "summary.md").read_text()
    assert f"| val/elbo | {run5.metrics['val/elbo']:.2f} |" in summary
    assert f"| test/elbo | {run5.metrics['test/elbo']:.2f} |" in summary
    assert f"| val/active_units | {run5.metrics['val/active_units']:.2f} |" in summary
    for name in REPORT_FILES:
        assert f"]({name})" in summary
    assert "Not drawn" not in summary


def test_report_of_a_run_without_some_visuals_says_what_is_missing(run2):
    summary = (run2.dir / "report" / "summary.md").read_text()
    assert not (run2.dir / "report" / "latent_pca.png").exists()
    assert "Not drawn: latent_pca.png" in summary


def test_vae_report_cli_rewrites_the_report_of_a_finished_run(run5, tmp_path):
    run_dir = shutil.copytree(run5.dir, tmp_path / "run")
    shutil.rmtree(run_dir / "report")
    result = run_module("vae_lightning.report", [f"run_dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Report: {run_dir / 'report' / 'summary.md'}" in result.stdout
    for name in REPORT_FILES:
        assert_png_not_blank(run_dir / "report" / name)


def test_report_of_a_multirun_folder_compares_its_jobs(run5, run2, tmp_path):
    # The two trained runs as Hydra lays out a sweep, and a third job that failed at once.
    sweep = tmp_path / "multirun"
    jobs = [(run5.dir, "model.latent_dim=5"), (run2.dir, "model.latent_dim=2"), (None, "x=1")]
    for job, (run_dir, override) in enumerate(jobs):
        (sweep / str(job)).mkdir(parents=True)
        if run_dir is not None:
            shutil.copytree(run_dir, sweep / str(job), dirs_exist_ok=True)
        (sweep / str(job) / ".hydra").mkdir(exist_ok=True)
        overrides = OmegaConf.create(["debug=fast", override])
        OmegaConf.save(overrides, sweep / str(job) / ".hydra" / "overrides.yaml")
    (sweep / "2" / "failure.txt").write_text("overrides: debug=fast x=1\n\nValueError: x\n")

    markdown = write_report(sweep)
    assert markdown == sweep / "report" / "comparison.md"
    text = markdown.read_text()
    assert "Overrides shared by every job: `debug=fast`" in text
    assert f"| 0 | `model.latent_dim=5` | {run5.metrics['val/elbo']:.2f} |" in text
    assert f"| 1 | `model.latent_dim=2` | {run2.metrics['val/elbo']:.2f} |" in text
    assert "| 2 (failed) | `x=1` | — | — | — |" in text
    best = max((run5.metrics["val/elbo"], "0"), (run2.metrics["val/elbo"], "1"))
    assert f"Best val/elbo: job {best[1]} ({best[0]:.2f})." in text

    rows = (sweep / "report" / "comparison.csv").read_text().splitlines()
    assert rows[0] == "job,status,overrides,val/elbo,val/kl,val/active_units"
    job0, job1, job2 = (row.split(",") for row in rows[1:])
    assert job0[:3] == ["0", "ok", "debug=fast model.latent_dim=5"]
    assert float(job0[3]) == pytest.approx(run5.metrics["val/elbo"], rel=1e-5)
    assert float(job1[5]) == run2.metrics["val/active_units"]
    assert job2 == ["2", "failed", "debug=fast x=1", "", "", ""]
    assert_png_not_blank(sweep / "report" / "val_elbo.png")


# ------------------------------------------------- a hand-made model, known posteriors
class BandNet(nn.Module):
    """Encoder with known posteriors: mu_d = scale_d * x[0, 0, 0], fixed log-variances."""

    def __init__(self, scale: list[float], logvar: list[float]) -> None:
        super().__init__()
        self.latent_dim = len(scale)
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("logvar", torch.tensor(logvar))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        signal = x[:, 0, 0, 0:1]
        return signal * self.scale, self.logvar.expand(len(x), -1)


def band_image(z: Tensor) -> Tensor:
    """Decoder: dimension d paints rows 3d..3d+2 with (z_d + 3) / 6, z in [-3, 3] -> [0, 1]."""
    images = torch.zeros(len(z), 1, 28, 28)
    for dim in range(z.shape[1]):
        images[:, 0, 3 * dim : 3 * dim + 3, :] = ((z[:, dim] + 3) / 6).clamp(0, 1)[:, None, None]
    return images


class BandVAE(L.LightningModule):
    def __init__(self, scale: list[float], logvar: list[float]) -> None:
        super().__init__()
        self.net = BandNet(scale, logvar)

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
    events = load_events_in(tmp_path)
    assert "val/manifold" not in events.Tags()["images"]  # 4-D latent space
    grid = image_array(events.Images("val/traversals")[-1])
    centre = torch.tensor(SCALE)  # image 0 has signal 1
    for row, dim in enumerate([1, 3, 2]):  # dimension 0 (KL 0) is not shown: K = 3
        z = centre.repeat(5, 1)
        z[:, dim] = torch.linspace(-3, 3, 5)
        assert_tiles_equal(grid, row, as_logged(band_image(z)))


def test_active_units_and_kl_histogram_on_a_model_that_ignores_dimensions(tmp_path):
    metrics = validate(BandVAE(SCALE, LOGVAR), [PosteriorCollapse(num_images=20)], tmp_path)
    assert metrics["val/active_units"] == 2
    events = load_events_in(tmp_path)
    assert events.Scalars("val/active_units")[-1].value == 2
    histogram = events.Histograms("val/kl_per_dim")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sum(closed_form_kl()), rel=1e-5)
    assert histogram.min == 0.0


def test_manifold_tiles_decode_gaussian_quantiles(tmp_path):
    manifold = LatentManifold(grid_size=3, quantile_range=(0.05, 0.95))
    validate(BandVAE([1.0, 0.5], [0.0, 0.0]), [manifold], tmp_path)
    grid = image_array(load_events_in(tmp_path).Images("val/manifold")[-1])
    assert grid.shape == (2 + 3 * TILE, 2 + 3 * TILE)
    q = [NormalDist().inv_cdf(p) for p in (0.05, 0.5, 0.95)]
    for row in range(3):
        z = torch.tensor([[q[col], q[2 - row]] for col in range(3)])  # z2 up, z1 right
        assert_tiles_equal(grid, row, as_logged(band_image(z)))


def test_spherical_interpolation_is_an_option(tmp_path):
    interpolations = LatentInterpolations(num_pairs=2, num_steps=3, method="spherical")
    validate(BandVAE([1.0, 2.0], [0.0, 0.0]), [interpolations], tmp_path)
    (image,) = load_events_in(tmp_path).Images("val/interpolations")
    assert (image.height, image.width) == (2 + 2 * TILE, 2 + 5 * TILE)


def load_events_in(log_dir: Path) -> EventAccumulator:
    guidance = {"images": 0, "scalars": 0, "histograms": 0}
    events = EventAccumulator(str(log_dir), size_guidance=guidance)
    events.Reload()
    return events


# ------------------------------------------------------------------ schedule and errors
@pytest.mark.parametrize(
    ("epoch", "sanity", "expected"),
    [(0, False, True), (1, False, False), (3, False, True), (9, False, True), (0, True, False)],
)
def test_visuals_run_every_n_epochs_and_at_the_last(epoch, sanity, expected):
    trainer = SimpleNamespace(current_epoch=epoch, max_epochs=10, sanity_checking=sanity)
    assert is_due(trainer, every_n_epochs=3) is expected


def test_bad_callback_settings_fail_with_what_to_do():
    with pytest.raises(ValueError, match=r"method='cubic'.*\['linear', 'spherical'\]"):
        LatentInterpolations(method="cubic")
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
