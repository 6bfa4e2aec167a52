"""Shared fixtures: small generated IDX datasets and composed Hydra configs."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

from vae_lightning.train import compose_as_launched

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SHARED_MNIST = PROJECT_ROOT.parent / "shared" / "data" / "mnist"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def make_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images with class-dependent structure (a bright bar whose position is the label)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row = 2 + 2 * int(label)
        image[row : row + 3, 4:24] = 230
    return images, labels


def write_split(
    folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool
) -> None:
    suffix = ".gz" if gz else ""
    image_name, label_name = SPLIT_FILES[split]
    write_idx(folder / f"{image_name}{suffix}", images)
    write_idx(folder / f"{label_name}{suffix}", labels)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    write_split(folder, "train", *make_digits(n_train, seed=1), gz=gz)
    write_split(folder, "test", *make_digits(n_test, seed=2), gz=gz)
    return folder


@pytest.fixture(scope="session")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder with small gzipped MNIST-format files: 600 train, 200 test images."""
    return write_dataset(tmp_path_factory.mktemp("idx"))


def idx_data(root: Path) -> list[str]:
    """Overrides that train on the IDX files in root (see ``write_dataset``), never downloading:
    500 training and 100 validation images from its 600, and its 200 test images."""
    return [f"data.root={root}", "data.download=false", "data.val_size=100"]


def compose_config(run_dir: Path, data_root: Path, overrides: list[str] = ()) -> DictConfig:
    """Compose conf/train.yaml as `vae-train` would, writing into run_dir, on data_root.

    Needs an initialised Hydra (``initialize_config_dir``); sets HydraConfig like a launch.
    """
    base = [
        *idx_data(data_root),
        f"paths.output_dir={run_dir}",
        f"paths.log_dir={run_dir}",
        f"paths.data_dir={run_dir / 'data'}",
        f"hydra.run.dir={run_dir}",
    ]
    return compose_as_launched("train", [*base, *overrides])


@pytest.fixture
def compose_train(tmp_path: Path, idx_root: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose conf/train.yaml as `vae-train` would, with outputs in tmp_path and fake data."""

    def _compose(overrides: list[str] = (), data_root: Path | None = None) -> DictConfig:
        return compose_config(tmp_path, data_root or idx_root, overrides)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield _compose
    GlobalHydra.instance().clear()


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` importing this checkout's src/, whatever is installed, and
    tests/ (fault_injection and rank_probe are targets in some tests' configs)."""
    paths = [
        str(PROJECT_ROOT / "src"),
        str(PROJECT_ROOT / "tests"),
        *filter(None, [os.environ.get("PYTHONPATH")]),
    ]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def vae_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`vae-train ARGS` run from cwd as a user runs it (see run_module)."""
    return run_module("vae_lightning.train", args, cwd)


def hparams_session_groups(log_dir: Path) -> list[api_pb2.SessionGroup]:
    """What TensorBoard's HParams tab lists, asked of its own backend."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(log_dir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(log_dir))
    context = base_plugin.TBContext(
        logdir=str(log_dir), multiplexer=multiplexer, data_provider=provider
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN],
    )
    handler = list_session_groups.Handler(
        tb_context.RequestContext(), backend_context.Context(context), "", request
    )
    return list(handler.run().session_groups)
