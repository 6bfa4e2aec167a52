"""data.hflip: random left-right flips of training batches on their device, drawn from the
training stream, so that a resumed run is the uninterrupted one bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers.runs import compose_config
from vae_lightning.data import MNISTDataModule
from vae_lightning.data.augment import random_hflip
from vae_lightning.train import train


def test_each_image_is_flipped_when_its_uniform_draw_is_below_one_half():
    images = torch.arange(6 * 2 * 3 * 4, dtype=torch.uint8).reshape(6, 2, 3, 4)
    torch.manual_seed(1)
    draws = torch.rand(6)
    torch.manual_seed(1)
    flipped = random_hflip(images)
    for image, out, draw in zip(images, flipped, draws, strict=True):
        expected = image[:, :, torch.arange(3, -1, -1)] if draw < 0.5 else image
        assert torch.equal(out, expected)
    assert 0 < int((draws < 0.5).sum()) < 6  # this seed flips some and keeps some


def test_only_training_batches_are_flipped(idx_root):
    module = MNISTDataModule(
        root=str(idx_root), download=False, val_size=100, binarize="none", hflip=True
    )
    module.setup("fit")
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    images, labels = next(iter(module.train_dataloader()))
    module.trainer.training = True
    torch.manual_seed(0)
    out, _ = module.on_after_batch_transfer((images, labels), 0)
    inputs = images.float() / 255
    same = (out == inputs).flatten(1).all(1)
    mirrored = (out == inputs.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < len(images)
    module.trainer.validating = True
    val_images, val_labels = next(iter(module.val_dataloader()))
    out, _ = module.on_after_batch_transfer((val_images, val_labels), 0)
    assert torch.equal(out, val_images.float() / 255)


# 500 training images in batches of 50: 10 steps, one epoch, interrupted after step 6.
RUN = [
    "data.steps_per_batch=1",  # interrupts at given steps (test_steps_per_batch.py: K > 1)
    "data.batch_size=50",
    "data.hflip=true",
    "model.latent_dim=4",
    "model.net.hidden_dims=[32]",
    "trainer.max_epochs=1",
    "trainer.deterministic=true",
    "~callbacks.progress_bar",
    "~callbacks.images",
    "~callbacks.traversals",
    "~callbacks.interpolations",
    "~callbacks.latent_space",
    "test=false",
]


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights after the run's one epoch."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 10
    return checkpoint["state_dict"]


def test_a_run_with_flips_resumes_bit_for_bit(compose_train, tmp_path, idx_root):
    reference = tmp_path / "uninterrupted"
    train(compose_config(reference, idx_root, RUN))
    unflipped = tmp_path / "unflipped"
    train(compose_config(unflipped, idx_root, [*RUN, "data.hflip=false"]))

    resumed = tmp_path / "resumed"
    interrupt = [
        "+callbacks.signal._target_=fault_injection.SignalAtStep",
        "+callbacks.signal.step=6",
        f"+callbacks.signal.signum={int(signal.SIGINT)}",
        "+callbacks.signal.during=train",
    ]
    with pytest.raises(SystemExit):
        train(compose_config(resumed, idx_root, [*RUN, *interrupt]))
    last = resumed / "checkpoints" / "last.ckpt"
    train(compose_config(resumed, idx_root, [*RUN, f"ckpt_path={last}"]))

    weights, expected = last_weights(resumed), last_weights(reference)
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    other = last_weights(unflipped)
    assert not all(torch.equal(other[name], expected[name]) for name in expected)
