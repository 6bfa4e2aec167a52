"""Hydra multirun support: per-job TensorBoard names, DDP inside sweeps, failing jobs.

Everything here is about how `vae-train -m` runs jobs; ``train(cfg)`` knows nothing of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from vae_lightning.run_layout import FAILURE_FILE, RunLayout

log = logging.getLogger(__name__)

# File systems allow 255 bytes per path component; long override lists are cut and hashed.
MAX_NAME_LENGTH = 200
# Hydra overrides that describe the sweep itself, not the job: a DDP child re-running one
# job must not get them (they would start a sweep or a launcher of its own).
SWEEP_ONLY_HYDRA_OVERRIDES = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.run",
    "hydra.job.name",
    "hydra.output_subdir",
)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``, a sweeper, a launcher)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# The TensorBoard run of a launch with no overrides at all.
NO_OVERRIDES_NAME = "defaults"


def job_name() -> str:
    """The run's overrides as one folder-safe name, e.g. ``model.beta=4,model.latent_dim=8``.

    Used as the TensorBoard run version (``${job_name:}`` in conf/logger/tensorboard.yaml), so
    that ``tensorboard --logdir outputs`` lists ``runs/<date>/<time>/tensorboard/model=conv``
    and ``multirun/.../<job num>/tensorboard/model.beta=4``: runs told apart by what was
    changed, not all called ``tensorboard``. Keys that say where data and outputs live are
    left out (hydra.job.config.override_dirname.exclude_keys). "" without Hydra.
    """
    if not HydraConfig.initialized():
        return ""
    name = HydraConfig.get().job.override_dirname.replace("/", "_") or NO_OVERRIDES_NAME
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME_LENGTH - 9]}-{digest}"
    return name


OmegaConf.register_new_resolver("job_name", job_name, replace=True)


def launching_process() -> str:
    """The id of the process that launches a multirun, for its sweep folder's name.

    ``<date>/<time>`` alone is shared by two multiruns started in the same second, whose jobs
    would then overwrite each other's folders. No two running processes share an id. The value
    is cached (``use_cache``), and Hydra copies the cache of the launching process's config
    into every job's, so jobs run by a launcher in other processes (submitit, joblib) resolve
    the same folder.
    """
    return str(os.getpid())


OmegaConf.register_new_resolver("launching_process", launching_process, use_cache=True)


@contextmanager
def multirun_job() -> Iterator[None]:
    """Run one job of a multirun in this process so that DDP works and the next job starts clean.

    Lightning starts ranks 1..N-1 of ``strategy=ddp`` by re-running ``sys.argv`` with
    ``hydra.run.dir`` set to the run dir of Hydra's config. Inside a multirun that is the
    whole sweep (``-m`` and every value: rank 1 would run a sweep of its own) and a fresh
    timestamped run dir (Lightning #11617 and #18175, Hydra #2070). For the duration of the
    job the command line is narrowed to this job's own overrides and the run dir set to the
    job's output dir, so the children train exactly this job and log next to rank 0.

    Lightning also leaves the process group and its rendezvous variables (``LOCAL_RANK``,
    ``MASTER_PORT``, ...) behind; the next job of a sequential sweep would take them for a
    launcher's and wait for ranks that never come. Both are cleared when the job ends.
    Outside a multirun nothing changes.
    """
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    job_hydra_overrides = [
        override
        for override in hydra_cfg.overrides.hydra
        if not override.lstrip("~+").startswith(SWEEP_ONLY_HYDRA_OVERRIDES)
    ]
    saved_argv, saved_env, saved_run_dir = sys.argv, dict(os.environ), hydra_cfg.run.dir
    sys.argv = [
        sys.argv[0],
        *hydra_cfg.overrides.task,
        *job_hydra_overrides,
        "hydra.mode=RUN",  # even when a config (hparams_search) asks for MULTIRUN
    ]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = saved_run_dir


def record_failure(output_dir: str | Path) -> None:
    """Log the exception being handled and write it to ``<output_dir>/failure.txt``."""
    log.exception("This job failed; the other jobs of the sweep go on.")
    overrides = " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""
    path = RunLayout(output_dir).failure_file  # ReportFailedJobs lists them at the end
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"overrides: {overrides}\n\n{traceback.format_exc()}")


class ReportFailedJobs(Callback):
    """At the end of a multirun, list the jobs that failed and exit with status 1.

    Each failing job has already been logged and its traceback written to its folder; this
    gathers them (launchers such as joblib and submitit run jobs in other processes, hence
    the files) so that a sweep with failures neither looks like a success nor hides the
    results of the jobs that finished.
    """

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = sorted(
            (
                path
                for path in sweep_dir.glob(f"**/{FAILURE_FILE}")
                if path.stat().st_mtime >= self.started
            ),
            key=lambda path: str(path),
        )
        if not failures:
            return
        lines = [f"{len(failures)} job(s) of this sweep failed ({sweep_dir}):"]
        for path in failures:
            text = path.read_text().splitlines()
            error = next((line for line in reversed(text) if line.strip()), "")
            lines.append(f"  {path.parent.relative_to(sweep_dir)}: {text[0]}\n    {error}")
            lines.append(f"    traceback: {path}")
        log.error("\n".join(lines))
        if self.exit_on_failure:
            # Hydra turns exceptions raised by callbacks into warnings; an exit status is what
            # shells, schedulers and CI see.
            sys.exit(1)
