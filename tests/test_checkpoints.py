"""Checkpoint writes are all-or-nothing; unreadable checkpoints give a clear error."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra.utils import instantiate

from helpers.paths import PROJECT_ROOT
from vae_lightning.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    RunDirCheckpoint,
    atomic_torch_save,
    load_checkpoint,
)

GOOD = {"state_dict": {"w": torch.arange(1000.0)}, "global_step": 7, "epoch": 1, "loops": {}}


def test_trainer_config_uses_atomic_checkpoint_io(compose_train):
    cfg = compose_train()
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(GOOD, path)
    good_bytes = path.read_bytes()
    real_save = torch.save

    def disk_full_halfway(obj, file, *args, **kwargs):
        real_save({"state_dict": {"w": torch.zeros(10_000)}}, file)  # some bytes land ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(torch, "save", disk_full_halfway)
    new = {**GOOD, "global_step": 8}
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(new, path)
    assert path.read_bytes() == good_bytes
    assert load_checkpoint(path)["global_step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_new_checkpoint_replaces_the_old_one_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    atomic_torch_save(GOOD, path)
    atomic_torch_save({**GOOD, "global_step": 9}, path)
    assert load_checkpoint(path)["global_step"] == 9
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


KILLED_DURING_SAVE = """
import sys, time, torch
from vae_lightning.checkpoints import AtomicCheckpointIO
real_save = torch.save
def slow_save(obj, file, *args, **kwargs):
    file.write(b"PK" + bytes(100_000))  # a partial zip, as a save cut short leaves it
    file.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
AtomicCheckpointIO().save_checkpoint({"global_step": 8}, sys.argv[1])
"""


def test_process_killed_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(GOOD, path)
    good_bytes = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_DURING_SAVE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout.readline().strip() == "writing"
        time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert path.read_bytes() == good_bytes
    assert load_checkpoint(path)["global_step"] == 7
    # The half-written temp file is left (SIGKILL allows no clean-up) under a name that no
    # reader mistakes for a checkpoint.
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.")
    assert leftovers[0].endswith(".tmp")


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(GOOD, path)
    path.write_bytes(path.read_bytes()[:200])
    (tmp_path / "epoch_003.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"Checkpoint {path} cannot be read" in message
    assert "truncated or corrupt (200 bytes)" in message
    assert "this folder also holds: epoch_003.ckpt" in message


def test_other_files_are_not_taken_for_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="is not a Lightning training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_run_dir_checkpoint_keeps_model_checkpoints_state_key():
    """Its state is saved under ModelCheckpoint's key (old runs resume their bookkeeping);
    the key is built once, and still names the monitor and triggers it was built with."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for kwargs in ({"monitor": "val/bound", "mode": "max"}, {"every_n_train_steps": 7}):
        ours = RunDirCheckpoint(**kwargs)
        assert ours.state_key == ModelCheckpoint(**kwargs).state_key
        assert ours.state_key is ours.state_key  # cached, not rebuilt per hook
