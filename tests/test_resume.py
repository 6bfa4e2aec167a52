"""Interrupted runs save, exit non-zero and resume to exactly the uninterrupted result."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.data import idx_data
from helpers.events import written_scalars
from helpers.paths import PROJECT_ROOT
from helpers.runs import compose_config
from vae_lightning.checkpoints import atomic_torch_save
from vae_lightning.errors import UserError
from vae_lightning.run_dir import ResumeError, expand_resume, quote
from vae_lightning.train import train

# 500 training images in batches of 50: 10 steps per epoch, 20 in all.
SMALL_RUN = [
    "data.steps_per_batch=1",  # interrupts at given steps (test_steps_per_batch.py: K > 1)
    "data.batch_size=50",
    "model.latent_dim=4",
    "model.net.hidden_dims=[32]",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "~callbacks.progress_bar",
    "~callbacks.images",
    "test=false",
]
STEPS_PER_EPOCH, TOTAL_STEPS = 10, 20


def signal_at(step: int, signum: signal.Signals, during: str = "train") -> list[str]:
    return [
        "+callbacks.signal._target_=fault_injection.SignalAtStep",
        f"+callbacks.signal.step={step}",
        f"+callbacks.signal.signum={int(signum)}",
        f"+callbacks.signal.during={during}",
    ]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """Each write of ``tag``: a step the resumed run logged twice would show twice."""
    return written_scalars(run_dir / "tensorboard", tag)


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == TOTAL_STEPS
    return checkpoint["state_dict"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same weights bit for bit, same curves step for step (each step logged once)."""
    weights, expected = last_weights(run_dir), last_weights(reference)
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    for tag in ("train/loss", "val/elbo"):
        assert scalars(run_dir, tag) == scalars(reference, tag)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> Path:
    from hydra import initialize_config_dir

    from helpers.paths import CONF_DIR

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train(compose_config(run_dir, idx_root, SMALL_RUN))
    assert len(scalars(run_dir, "train/loss")) == TOTAL_STEPS
    return run_dir


@pytest.mark.parametrize(
    ("signum", "during", "step"),
    [
        (signal.SIGINT, "train", 13),  # Ctrl-C in the middle of epoch 1
        (signal.SIGINT, "train", 3),  # before the checkpoint callback saved anything
        (signal.SIGTERM, "validation", STEPS_PER_EPOCH),  # held back until validation ends
    ],
    ids=["ctrl-c mid-epoch", "ctrl-c in the first epoch", "sigterm during validation"],
)
def test_interrupt_saves_and_resume_is_exact(
    compose_train, tmp_path, idx_root, uninterrupted, caplog, signum, during, step
):
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in background
    with pytest.raises(SystemExit) as info:
        train(compose_train([*SMALL_RUN, *signal_at(step, signum, during)]))
    assert info.value.code == 128 + signum
    assert f"vae-train resume={tmp_path}" in caplog.text
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == step
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    if during == "validation":  # the epoch's validation finished and was logged once
        assert [s for s, _ in scalars(tmp_path, "val/elbo")] == [STEPS_PER_EPOCH - 1]

    last = tmp_path / "checkpoints" / "last.ckpt"
    train(compose_config(tmp_path, idx_root, [*SMALL_RUN, f"ckpt_path={last}"]))
    assert_same_run(tmp_path, uninterrupted)  # last.ckpt is the end: no stale last.ckpt and
    assert not list(tmp_path.glob("checkpoints/*-v1.ckpt"))  # no last-v1.ckpt beside it


def test_requeue_signal_saves_and_a_slurm_restart_resumes_by_itself(
    compose_train, tmp_path, idx_root, uninterrupted, monkeypatch, caplog
):
    """SIGUSR1 (SLURM's pre-timeout signal) stops like SIGTERM (exit 138; outside a SLURM job
    there is nothing to requeue); the same launch again with SLURM_RESTART_COUNT=1, as a
    requeued job is started, resumes last.ckpt without being told (the real controller:
    tests/test_slurm_preemption.py)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    with pytest.raises(SystemExit) as info:
        train(compose_train([*SMALL_RUN, *signal_at(13, signal.SIGUSR1)]))
    assert info.value.code == 128 + signal.SIGUSR1
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13
    )
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(compose_config(tmp_path, idx_root, SMALL_RUN))
    assert f"Requeued SLURM job: resuming from {tmp_path / 'checkpoints' / 'last.ckpt'}" in (
        caplog.text
    )
    assert_same_run(tmp_path, uninterrupted)


def test_sigterm_during_final_test_keeps_the_training_checkpoints(compose_train, tmp_path):
    """trainer.test() loads the *best* weights: saving last.ckpt then would be wrong."""
    run = ["debug=fast", "~callbacks.progress_bar", "test=true", "data.eval_batch_size=50"]
    cfg = compose_train([*run, *signal_at(0, signal.SIGTERM, during="test")])
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(SystemExit) as info:
        train(cfg)
    assert info.value.code == 128 + signal.SIGTERM
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    best = torch.load(checkpoints / "epoch_000.ckpt", weights_only=True)
    assert saved["loops"] == best["loops"]  # written by ModelCheckpoint at the epoch's end


# ------------------------------------------------------------------ resume= on the CLI
@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A run dir as vae-train leaves it: its overrides and a (minimal) last checkpoint."""
    run_dir = tmp_path / "runs" / "2026-11-25" / "10-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = ["model=conv", "model.latent_dim=16", "ckpt_path=/old/last.ckpt"]
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    checkpoint = {"state_dict": {}, "global_step": 5, "epoch": 0, "loops": {}}
    atomic_torch_save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    atomic_torch_save(checkpoint, run_dir / "checkpoints" / "epoch_000.ckpt")
    return run_dir


def test_resume_expands_to_the_runs_own_overrides(fake_run):
    last = fake_run / "checkpoints" / "last.ckpt"
    args = ["--cfg", "job", "trainer.max_epochs=20", f"resume={fake_run}", "model.latent_dim=8"]
    assert expand_resume(args) == [
        "--cfg",
        "job",
        "model=conv",
        "model.latent_dim=16",  # the run's own overrides first ...
        "trainer.max_epochs=20",
        "model.latent_dim=8",  # ... so that new values win
        "hydra.mode=RUN",
        f"hydra.run.dir={quote(fake_run)}",
        f"ckpt_path={quote(last)}",
    ]
    epoch = fake_run / "checkpoints" / "epoch_000.ckpt"
    assert expand_resume([f"resume={epoch}"])[-2:] == [
        f"hydra.run.dir={quote(fake_run)}",
        f"ckpt_path={quote(epoch)}",
    ]
    assert expand_resume(["model=mlp"]) == ["model=mlp"]  # no resume=: untouched


def test_resume_continues_the_runs_own_tensorboard_folder(tmp_path):
    """A run's events are in tensorboard/<its overrides>/ (or, from vae-lightning 0.1,
    tensorboard/ itself): a resumed launch continues that folder, whatever its overrides."""
    from vae_lightning.train import event_subfolders

    root = tmp_path / "tensorboard"
    assert event_subfolders(root) == []
    version = root / "model.beta=4,model.latent_dim=8"
    version.mkdir(parents=True)
    (version / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    assert event_subfolders(root) == ["model.beta=4,model.latent_dim=8"]
    (version / "events.out.tfevents.1.host.1.0").rename(root / "events.out.tfevents.1.host.1.0")
    assert event_subfolders(root) == [""]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        ("nothing", "no such run dir or checkpoint file"),
        ("no last.ckpt", "no checkpoints/last.ckpt in this folder"),
        ("no record", "has no .hydra/overrides.yaml, so its config is unknown"),
        ("truncated", "cannot be read .*truncated or corrupt"),
        ("multirun", "continues one run; run it without -m"),
    ],
)
def test_resume_errors_say_what_to_do(fake_run, break_it, message):
    target, extra = fake_run, []
    if break_it == "nothing":
        target = fake_run / "elsewhere"
    elif break_it == "no last.ckpt":
        (fake_run / "checkpoints" / "last.ckpt").unlink()
    elif break_it == "no record":
        (fake_run / ".hydra" / "overrides.yaml").unlink()
    elif break_it == "truncated":
        last = fake_run / "checkpoints" / "last.ckpt"
        last.write_bytes(last.read_bytes()[:100])
    else:
        extra = ["-m"]
    with pytest.raises(ResumeError, match=message):
        expand_resume([*extra, f"resume={target}"])


# --------------------------------------------------- a run dir moved, a finished run
def test_run_dir_moved_after_an_interrupt_resumes_in_place(tmp_path, idx_root, uninterrupted):
    """Clusters run on scratch and users copy runs home: interrupted, moved, resumed from the
    new place, the run continues its own last.ckpt (not a last-v1.ckpt beside a stale one)
    and ends bit for bit where the uninterrupted run does."""
    from hydra import initialize_config_dir

    from helpers.paths import CONF_DIR

    scratch, home = tmp_path / "scratch", tmp_path / "home"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(SystemExit):
            train(compose_config(scratch, idx_root, [*SMALL_RUN, *signal_at(13, signal.SIGTERM)]))
        shutil.move(scratch, home)
        last = home / "checkpoints" / "last.ckpt"
        train(compose_config(home, idx_root, [*SMALL_RUN, f"ckpt_path={last}"]))
    assert sorted(p.name for p in (home / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert_same_run(home, uninterrupted)


def test_finished_run_moved_and_extended_tests_its_best_checkpoint_in_the_new_place(
    tmp_path, idx_root, uninterrupted
):
    from hydra import initialize_config_dir

    from helpers.paths import CONF_DIR

    home = tmp_path / "home"
    shutil.copytree(uninterrupted, home)
    last = home / "checkpoints" / "last.ckpt"
    more = [*SMALL_RUN, "trainer.max_epochs=3", "test=true", "test_iwae_k=0"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        metrics = train(compose_config(home, idx_root, [*more, f"ckpt_path={last}"]))
        assert "test/elbo" in metrics  # the best checkpoint was found (it moved with the run)
        resumed = torch.load(last, weights_only=True)
        assert resumed["global_step"] == TOTAL_STEPS + STEPS_PER_EPOCH
        state = next(v for k, v in resumed["callbacks"].items() if k.startswith("ModelCheckpoint"))
        assert Path(state["best_model_path"]).parent == home / "checkpoints"
        assert not list((home / "checkpoints").glob("last-v*.ckpt"))
        # Finished: resuming with no more epochs to train says so, and writes nothing.
        before = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}
        with pytest.raises(UserError, match="already trained 3 epochs and trainer.max_epochs=3"):
            train(compose_config(home, idx_root, [*more, f"ckpt_path={last}"]))
        assert {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()} == before


# --------------------------------------------------- real processes, really killed
def cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT / "tests")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "vae_lightning.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_at_step(args: list[str], cwd: Path, step: int, signum: signal.Signals) -> tuple[int, str]:
    """Start a run that pauses at ``step``, send it ``signum`` there; (exit code, output)."""
    marker = cwd / f"at-step-{step}"
    pause = [
        "+callbacks.pause._target_=fault_injection.PauseAtStep",
        f"+callbacks.pause.step={step}",
        f"+callbacks.pause.marker={marker}",
    ]
    process = cli([*args, *pause], cwd)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[0][-3000:]
    process.send_signal(signum)
    output = process.communicate(timeout=240)[0]
    return process.returncode, output


@pytest.mark.slow
def test_killed_subprocess_resumes_bitwise(tmp_path, idx_root, uninterrupted):
    """SIGTERM mid-epoch: exit 143, then `resume=<run dir>` gives the uninterrupted weights
    and curves. SIGKILL (no chance to save): resume from the last epoch's checkpoint, and
    TensorBoard hides the steps the killed run logged after it."""
    data = idx_data(idx_root)
    for name, signum, step in (("sigterm", signal.SIGTERM, 13), ("sigkill", signal.SIGKILL, 14)):
        run_dir = tmp_path / name
        code, output = kill_at_step(
            [*SMALL_RUN, *data, f"hydra.run.dir={run_dir}"], tmp_path, step, signum
        )
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        if signum == signal.SIGTERM:
            assert code == 143, output[-3000:]
            assert f"Resume with:\n  vae-train resume={run_dir}" in output
            assert last["global_step"] == step
        else:
            assert code == -signal.SIGKILL
            assert last["global_step"] == STEPS_PER_EPOCH  # end of epoch 0
            assert len(scalars(run_dir, "train/loss")) > STEPS_PER_EPOCH  # logged past it

        resumed = cli([f"resume={run_dir}"], tmp_path)
        output = resumed.communicate(timeout=300)[0]
        assert resumed.returncode == 0, output[-3000:]
        assert f"Run dir:          {run_dir}" in output
        assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_ddp_resume_at_an_epoch_boundary_is_exact(tmp_path, idx_root):
    """Two CPU processes: one epoch, then `resume=... trainer.max_epochs=2`, equals two epochs
    in one go. Each rank gets its own RNG states back (they draw different streams)."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "data.batch_size=25"]
    data = idx_data(idx_root)
    args = [*SMALL_RUN, *ddp, *data]
    for name, epochs in (("whole", 2), ("halves", 1)):
        run = cli(
            [*args, f"trainer.max_epochs={epochs}", f"hydra.run.dir={tmp_path / name}"], tmp_path
        )
        assert run.wait(timeout=600) == 0, run.communicate()[0][-3000:]
    resumed = cli([f"resume={tmp_path / 'halves'}", "trainer.max_epochs=2"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[0][-3000:]
    whole, halves = (
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("whole", "halves")
    )
    assert len(halves["callbacks"]["RNGStateCheckpoint"]["per_rank"]) == 2
    assert halves["global_step"] == whole["global_step"] == TOTAL_STEPS
    assert all(
        torch.equal(halves["state_dict"][k], whole["state_dict"][k]) for k in whole["state_dict"]
    )
