"""Fixtures: small generated IDX datasets and composed Hydra configs. Plain helpers live in
tests/helpers/ (import them as ``from helpers.<module> import ...``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from helpers.data import write_dataset
from helpers.paths import CONF_DIR
from helpers.runs import TrainedRun, compose_config, train_run


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder with small gzipped MNIST-format files: 600 train, 200 test images."""
    return write_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def compose_train(tmp_path: Path, idx_root: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose conf/train.yaml as `vae-train` would, with outputs in tmp_path and fake data."""

    def _compose(overrides: list[str] = (), data_root: Path | None = None) -> DictConfig:
        return compose_config(tmp_path, data_root or idx_root, overrides)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _compose
    GlobalHydra.instance().clear()


# Two tiny runs trained once per session with the real train() and configs, on generated IDX
# data; the visual callbacks, the HParams tab and the report are all read back from them.
@pytest.fixture(scope="session")
def visuals_run(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> TrainedRun:
    """Two epochs of a 5-D MLP VAE with every visual callback (and the final test)."""
    return train_run(
        tmp_path_factory.mktemp("visuals_run"),
        idx_root,
        [
            "debug=fast",
            "~callbacks.progress_bar",
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


@pytest.fixture(scope="session")
def manifold_run(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> TrainedRun:
    """One epoch of a 2-D MLP VAE, for the manifold; no test, latent space or traversals."""
    return train_run(
        tmp_path_factory.mktemp("manifold_run"),
        idx_root,
        [
            "debug=fast",
            "~callbacks.progress_bar",
            "model.latent_dim=2",
            "test=false",
            "~callbacks.latent_space",
            "~callbacks.traversals",
        ],
    )
