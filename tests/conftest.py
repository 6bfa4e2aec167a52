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
from helpers.runs import compose_config


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
