"""Pre-emption and multi-node DDP against a real SLURM controller (`make slurm` on localhost).

Each job is a plain ``sbatch`` script that ``exec``s ``python -m vae_lightning.train`` (so the
batch-shell signal reaches Python), with ``--open-mode=append`` (a requeued job's log is
kept). Skipped, with the reason, when no controller answers ``sinfo``; VAE_REQUIRE_SLURM=1
turns the skip into a failure. See docs/slurm-preemption.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import test_resume
import torch
from test_resume import SMALL_RUN, assert_same_run

from helpers.data import idx_data
from helpers.events import event_folder, written_scalars
from helpers.paths import PROJECT_ROOT
from helpers.slurm import require_slurm
from vae_lightning.data import MNISTDataModule
from vae_lightning.lit_module import VAELitModule
from vae_lightning.run_layout import EVENT_GLOB


@pytest.fixture(autouse=True)
def _needs_slurm() -> None:
    require_slurm()


pytestmark = [pytest.mark.slurm, pytest.mark.slow]

uninterrupted = test_resume.uninterrupted  # the reference run, trained in-process once

JOB_TIMEOUT_S = 900  # jobs queue behind others on a 2-core machine


def submit(script_body: str, folder: Path, sbatch_args: list[str]) -> str:
    """sbatch a bash script; its output goes to folder/slurm.out (appended across restarts)."""
    script = folder / "job.sh"
    pythonpath = os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT / "tests")])
    script.write_text(f"#!/bin/bash\nexport PYTHONPATH={pythonpath}\n{script_body}\n")
    answer = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--output={folder / 'slurm.out'}",
            "--open-mode=append",
            f"--chdir={folder}",
            "--job-name=vae-preempt-test",
            *sbatch_args,
            str(script),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return answer.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str:
    """A field of `scontrol show job` (State is JobState)."""
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True
    ).stdout
    for item in shown.split():
        key, _, value = item.partition("=")
        if key == field:
            return value
    return ""


def wait_for(condition, what: str, log: Path, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"timed out waiting for {what}; job log:\n{tail}")
        time.sleep(0.5)


def wait_until_done(job: str, log: Path) -> str:
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    wait_for(lambda: job_field(job, "JobState") in done, f"job {job} to end", log)
    return job_field(job, "JobState")


def train_command(args: list[str]) -> str:
    quoted = " ".join(f"'{arg}'" for arg in args)
    return f"{sys.executable} -m vae_lightning.train {quoted}"


def paused_run(idx_root: Path, run_dir: Path, step: int) -> list[str]:
    marker = run_dir.parent / f"at-step-{step}"
    return [
        *SMALL_RUN,
        *idx_data(idx_root),
        f"hydra.run.dir={run_dir}",
        "+callbacks.pause._target_=fault_injection.PauseAtStep",
        f"+callbacks.pause.step={step}",
        f"+callbacks.pause.marker={marker}",
        "+callbacks.pause.timeout=600",
    ]


@pytest.mark.parametrize(
    "interruption",
    ["scontrol requeue", "pre-timeout signal (batch shell, USR1)"],
)
def test_preempted_job_requeues_and_resumes_bitwise(
    tmp_path,
    idx_root,
    uninterrupted,
    interruption,
):
    """Stopped at step 13 (mid-epoch 1), the job saves last.ckpt, is requeued, starts again
    with SLURM_RESTART_COUNT=1, resumes in the same run dir and TensorBoard run, and ends
    with the uninterrupted run's weights bit for bit and each step logged once."""
    run_dir, step = tmp_path / "run", 13
    started = time.monotonic()
    # `exec`: Python is the batch shell's process, so B:USR1 reaches it (bash would die).
    job = submit(
        "exec " + train_command(paused_run(idx_root, run_dir, step)),
        tmp_path,
        ["--ntasks=1", "--cpus-per-task=1", "--time=30", "--signal=B:USR1@5"],
    )
    log = tmp_path / "slurm.out"
    marker = tmp_path / f"at-step-{step}"
    wait_for(marker.exists, f"job {job} to reach step {step}", log)
    reached = time.monotonic()
    if interruption == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:
        # What --signal=B:USR1@<s> sends ahead of the time limit, sent now (the real timer
        # may fire up to a minute early, which a test cannot place at a known step).
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    state = wait_until_done(job, log)
    finished = time.monotonic()
    output = log.read_text()
    print(
        f"{interruption}: step {step} after {reached - started:.1f} s, "
        f"requeued run done {finished - reached:.1f} s later"
    )
    assert state == "COMPLETED", output[-3000:]
    assert int(job_field(job, "Restarts")) == 1
    assert f"Requeued SLURM job: resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in output
    if interruption != "scontrol requeue":
        assert f"Requeued SLURM job {job}" in output  # SaveOnInterrupt asked for it
    assert output.count("Interrupted by") == 1
    assert {p.parent for p in (run_dir / "tensorboard").rglob(EVENT_GLOB)} == {
        event_folder(run_dir / "tensorboard")
    }  # one TensorBoard run, continued
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own auto-requeue stayed out
    assert_same_run(run_dir, uninterrupted)


def test_two_node_ddp_through_srun_matches_one_process(tmp_path, idx_root):
    """sbatch --ntasks=2, srun: two processes, each shown as task 0 of its own node
    (SLURM_NODEID=rank, SLURM_LOCALID=0: one host cannot hold two SLURM nodes here), so both
    are local rank 0. Logged val and test metrics equal one process's evaluation of the same
    checkpoints; only global rank 0 writes."""
    run_dir = tmp_path / "run"
    args = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "+trainer.num_nodes=2",
        *idx_data(idx_root),
        "data.batch_size=50",
        "data.eval_batch_size=50",  # 100 val, 200 test images: whole batches for each rank
        "model.latent_dim=4",
        "model.net.hidden_dims=[32]",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "~callbacks.progress_bar",
        "test=true",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    # Each task relabelled as task 0 of its own node, as two one-task nodes would show it.
    task = tmp_path / "task.sh"
    task.write_text(
        "export SLURM_NNODES=2 SLURM_NTASKS_PER_NODE=1 SLURM_NODEID=$SLURM_PROCID "
        f"SLURM_LOCALID=0\nexec {train_command(args)}\n"
    )
    two_nodes = f"export MASTER_ADDR=127.0.0.1\nsrun bash {task}"
    started = time.monotonic()
    job = submit(two_nodes, tmp_path, ["--ntasks=2", "--cpus-per-task=1", "--time=30"])
    log = tmp_path / "slurm.out"
    state = wait_until_done(job, log)
    print(f"two-node DDP job: {time.monotonic() - started:.1f} s from sbatch to end")
    output = log.read_text()
    assert state == "COMPLETED", output[-3000:]
    for rank in (0, 1):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output, output[-3000:]

    # Only global rank 0 wrote: one event folder (one writer process), one run record, one
    # set of checkpoints, the summary once, nothing outside the run dir.
    tensorboard = run_dir / "tensorboard"
    event_files = list(tensorboard.rglob(EVENT_GLOB))
    assert len({p.parent for p in event_files}) == 1
    assert len({p.name.split(".")[-2] for p in event_files}) == 1  # one pid wrote events
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} <= {
        "epoch_000.ckpt",
        "epoch_001.ckpt",
        "last.ckpt",
    }
    assert output.count("Run dir:") == 1
    assert not (tmp_path / "outputs").exists()
    assert len(written_scalars(tensorboard, "train/loss")) == 2 * 5  # 250 per rank / 50

    # The metrics logged under DDP are one process's: the checkpoints, evaluated here on one
    # CPU, give the same numbers (val: last epoch, last.ckpt; test: the best checkpoint).
    datamodule = MNISTDataModule(
        root=str(idx_root), download=False, val_size=100, eval_batch_size=50
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    model = VAELitModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    (val,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    checkpoint_state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    best_path = next(
        state["best_model_path"]
        for name, state in checkpoint_state["callbacks"].items()
        if name.startswith("RunDirCheckpoint") or name.startswith("ModelCheckpoint")
    )
    best_model = VAELitModule.load_from_checkpoint(best_path)
    (test,) = trainer.test(best_model, datamodule=datamodule, verbose=False)
    compared = {f"val/{t}": val[f"val/{t}"] for t in ("loss", "rec", "kl", "elbo")}
    compared.update({name: value for name, value in test.items() if name.startswith("test/")})
    assert "test/elbo" in compared
    for name, single in compared.items():
        _, logged = written_scalars(tensorboard, name)[-1]
        assert single == pytest.approx(logged, rel=1e-5, abs=1e-5), name
