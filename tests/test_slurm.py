"""hydra/launcher=slurm against a real SLURM controller (`make slurm` starts one on localhost).

Skipped, with the reason, when no controller answers `sinfo`; `.ci/run` starts the cluster and
sets VAE_REQUIRE_SLURM=1, which turns that skip into a failure. Each job is one short epoch on
the generated IDX data and asks for one CPU, so two of them run at once on a 2-core machine.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers.runs import job_dirs, tiny_job_args, vae_train
from helpers.slurm import require_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# What a job asks SLURM for on a CPU-only machine: no GPUs, one core, a few minutes.
LOCAL_SLURM = [
    "hydra/launcher=slurm",
    "trainer=cpu",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
]


def file_tree(job_dir: Path) -> set[str]:
    """The job's files relative to its folder, event files named by their run and order only
    (their names hold a time stamp, the host and the process id)."""
    files = set()
    for path in job_dir.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(job_dir))
            files.add(re.sub(r"events\.out\.tfevents\.\d+\.[^/]+\.(\d+)$", r"events#\1", name))
    return files


def last_scalar(run: Path, tag: str) -> float:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag)[-1].value


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-4000:]


def test_a_sweep_on_slurm_writes_the_same_job_folders_as_the_basic_launcher(tmp_path, idx_root):
    require_slurm()
    sweep_dir = tmp_path / "slurm"
    sweep = ["model.latent_dim=2,8", "model.beta=0.5,4"]
    args = ["-m", *LOCAL_SLURM, *sweep, *tiny_job_args(idx_root, sweep_dir)]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, output(result)

    jobs = job_dirs(sweep_dir)
    assert [job.name for job in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        seen.add((config.model.latent_dim, config.model.beta))
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert not (job / "failure.txt").exists()
    assert seen == {(2, 0.5), (2, 4.0), (8, 0.5), (8, 4.0)}
    # Each element of the SLURM job array ran one job and returned its result to the sweep.
    assert len(list((sweep_dir / ".submitit").glob("*_*/*_result.pkl"))) == 4
    comparison = (sweep_dir / "report" / "comparison.md").read_text()
    assert all(f"| {job.name} | `model.latent_dim=" in comparison for job in jobs)

    # Job 0 again with the basic launcher: the same files, and the same TensorBoard run name.
    basic_dir = tmp_path / "basic"
    args = ["-m", "trainer=cpu", "model.latent_dim=2", "model.beta=0.5"]
    result = vae_train([*args, *tiny_job_args(idx_root, basic_dir)], tmp_path)
    assert result.returncode == 0, output(result)
    (basic_job,) = job_dirs(basic_dir)
    assert file_tree(jobs[0]) == file_tree(basic_job)
    assert {".hydra/config.yaml", "checkpoints/last.ckpt", "train.log"} <= file_tree(basic_job)
    (run,) = {p.parent for p in (jobs[0] / "tensorboard").rglob("events.out.tfevents.*")}
    basic_run = basic_job / "tensorboard" / run.name
    assert last_scalar(run, "val/elbo") == pytest.approx(last_scalar(basic_run, "val/elbo"))


def test_a_job_failing_on_slurm_is_reported_and_sets_the_exit_status(tmp_path, idx_root):
    require_slurm()
    sweep_dir = tmp_path / "sweep"
    # Job 1 asks for a validation split larger than the 600 training images: it fails in setup.
    args = ["-m", *LOCAL_SLURM, *tiny_job_args(idx_root, sweep_dir), "data.val_size=100,5000"]
    result = vae_train(args, tmp_path)

    assert result.returncode == 1, output(result)
    good, bad = job_dirs(sweep_dir)
    assert (good / "checkpoints" / "last.ckpt").is_file()
    assert "ConfigError: data.val_size=5000" in (bad / "failure.txt").read_text()
    summary = result.stdout.split("1 job(s) of this sweep failed", 1)[1]
    assert "1: overrides:" in summary and "ConfigError: data.val_size=5000" in summary
    assert f"traceback: {bad / 'failure.txt'}" in summary


def test_submitit_sees_a_cancelled_job_end_without_an_accounting_database(tmp_path):
    """The sacct stand-in (scripts/slurm/sacct): without it submitit reads the state of every
    job as UNKNOWN here, and waiting for a cancelled job's result never ends."""
    require_slurm()
    submitit = pytest.importorskip("submitit", reason="needs the sweeps extra")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_cpus_per_task=1, name="vae-test-cancel")
    job = executor.submit(time.sleep, 600)
    job.cancel()
    deadline = time.monotonic() + 60
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"job {job.job_id} still {job.state} after 60 s"
        time.sleep(1)
    assert job.state.startswith("CANCELLED")
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
