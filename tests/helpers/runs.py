"""Running the entry points as a user does: composed in-process, or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from omegaconf import DictConfig

from helpers.data import idx_data
from helpers.paths import CONF_DIR, PROJECT_ROOT
from vae_lightning.configs import compose_as_launched
from vae_lightning.train import train


def output_overrides(run_dir: Path) -> list[str]:
    """Overrides that put everything a run writes in run_dir, as `hydra.run.dir=run_dir`
    alone does for vae-train (composing in-process, the paths must be set too)."""
    return [
        f"paths.output_dir={run_dir}",
        f"paths.log_dir={run_dir}",
        f"paths.data_dir={run_dir / 'data'}",
        f"hydra.run.dir={run_dir}",
    ]


def compose_config(run_dir: Path, data_root: Path, overrides: list[str] = ()) -> DictConfig:
    """Compose conf/train.yaml as `vae-train` would, writing into run_dir, on data_root.

    Needs an initialised Hydra (``initialize_config_dir``); sets HydraConfig like a launch.
    """
    base = [*idx_data(data_root), *output_overrides(run_dir)]
    return compose_as_launched("train", [*base, *overrides])


def compose_data_option(run_dir: Path, data: str, overrides: list[str] = ()) -> DictConfig:
    """conf/train.yaml with ``data=<data>`` as it ships (data.root under run_dir), for tests
    that go through every data config: compose_config's IDX overrides (data.download=false)
    fit the MNIST family only. Needs an initialised Hydra."""
    return compose_as_launched("train", [f"data={data}", *output_overrides(run_dir), *overrides])


@dataclass
class TrainedRun:
    dir: Path
    cfg: DictConfig
    metrics: dict[str, Any]


def train_run(run_dir: Path, data_root: Path, overrides: list[str] = ()) -> TrainedRun:
    """Train in-process with the real configs and train(), laid out as vae-train lays a run
    out (.hydra/, checkpoints/, tensorboard/) in run_dir, on the IDX files in data_root."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_config(run_dir, data_root, overrides)
        metrics = train(cfg)
    return TrainedRun(run_dir, cfg, metrics)


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


# ------------------------------------------------------------------ multiruns
def tiny_job_args(idx_root: Path, sweep_dir: Path) -> list[str]:
    """One short epoch on the generated data, outputs under sweep_dir."""
    return [
        "debug=fast",
        *idx_data(idx_root),
        "test=false",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "+trainer.num_sanity_val_steps=0",
        "~callbacks.progress_bar",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.log_dir={sweep_dir.parent / 'outputs'}",
    ]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Hydra's numbered job folders of a multirun, in job order."""
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def tensorboard_runs(job_dir: Path) -> list[Path]:
    """Folders under <job>/tensorboard holding event files: TensorBoard's runs."""
    return sorted({p.parent for p in (job_dir / "tensorboard").rglob("events.out.tfevents.*")})


def output(result: subprocess.CompletedProcess) -> str:
    """The end of a finished subprocess's stdout and stderr, for assertion messages."""
    return result.stdout[-4000:] + result.stderr[-4000:]
