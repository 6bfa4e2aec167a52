"""data.steps_per_batch: several optimizer steps per Lightning batch, the same run as one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from test_nan_guard import inject_nan_at
from test_resume import SMALL_RUN, TOTAL_STEPS, signal_at

from helpers.events import all_written_scalars
from helpers.paths import CONF_DIR
from helpers.runs import compose_config, compose_data_option
from vae_lightning.callbacks.nan_guard import NonFiniteLossError
from vae_lightning.data.loaders import BatchGroup, ShardedPermutation, TensorBatchLoader
from vae_lightning.errors import ConfigError
from vae_lightning.lit_module import VAELitModule
from vae_lightning.train import train

# 10 steps per epoch in groups of 4, 4 and 2; train/* every 3rd step, so that log steps fall
# inside groups, at their ends and across epochs. SMALL_RUN sets data.steps_per_batch=1; a
# later override of it wins.
RUN = [*SMALL_RUN, "trainer.log_every_n_steps=3"]
GROUPED = "data.steps_per_batch=4"


def run(run_dir: Path, idx_root: Path, overrides: list[str]) -> Path:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train(compose_config(run_dir, idx_root, [*RUN, *overrides]))
    return run_dir


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_checkpoint(run_dir: Path, reference: Path) -> None:
    """Weights, Adam's state and the loops' counters that resume reads, bit for bit."""
    got, expected = checkpoint(run_dir), checkpoint(reference)
    assert got["global_step"] == expected["global_step"] == TOTAL_STEPS
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], value), name
    for index, state in expected["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer_states"][0]["state"][index][key], value), key
    # Every loop counter (steps, batches of the epoch, the logging step), as one step per
    # batch counts them: what lets a checkpoint resume with any steps_per_batch.
    assert got["loops"] == expected["loops"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same checkpoint and every scalar written at the same steps with the same values."""
    assert_same_checkpoint(run_dir, reference)
    # repr: a NaN logged by a skipped step equals a NaN (== does not).
    written, expected = (
        {tag: repr(writes) for tag, writes in all_written_scalars(d / "tensorboard").items()}
        for d in (run_dir, reference)
    )
    assert written == expected


@pytest.fixture(scope="module")
def one_step_per_batch(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> Path:
    return run(tmp_path_factory.mktemp("k1"), idx_root, ["data.steps_per_batch=1"])


def test_grouped_steps_write_the_run_of_one_step_per_batch(
    one_step_per_batch, tmp_path, idx_root, monkeypatch
):
    calls = []  # training_step's batches: groups of 4, 4 and 2 per epoch
    real_step = VAELitModule.training_step
    monkeypatch.setattr(
        VAELitModule,
        "training_step",
        lambda module, batch, batch_idx: (
            calls.append(len(batch)) or real_step(module, batch, batch_idx)
        ),
    )
    grouped = run(tmp_path, idx_root, [GROUPED])
    assert calls == [4, 4, 2] * 2
    expected = all_written_scalars(one_step_per_batch / "tensorboard")
    # train/* every third step at the count before the step (as Lightning writes them),
    # val/* at the end of each epoch: steps inside groups, at their ends, across epochs.
    assert [step for step, _ in expected["train/loss"]] == list(range(2, TOTAL_STEPS, 3))
    assert [step for step, _ in expected["val/elbo"]] == [9, 19]
    assert_same_run(grouped, one_step_per_batch)


@pytest.mark.parametrize(("interrupted", "resumed"), [(4, 1), (1, 4), (4, 4), (3, 4)])
def test_a_run_resumes_exactly_with_any_steps_per_batch(
    one_step_per_batch, tmp_path, idx_root, interrupted, resumed
):
    """Ctrl-C in the first epoch, resumed with the same or another setting: the loader's
    state counts batches and checkpoints count per step, whatever wrote them. The signal
    comes at the first group end at or after step 8 (9 for groups of 3)."""
    stop = -(-8 // interrupted) * interrupted
    with pytest.raises(SystemExit):
        run(
            tmp_path,
            idx_root,
            [f"data.steps_per_batch={interrupted}", *signal_at(stop, signal.SIGINT)],
        )
    assert checkpoint(tmp_path)["global_step"] == stop
    last = tmp_path / "checkpoints" / "last.ckpt"
    run(tmp_path, idx_root, [f"data.steps_per_batch={resumed}", f"ckpt_path={last}"])
    assert_same_run(tmp_path, one_step_per_batch)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.gradient_clip_val=30",
        "+trainer.accumulate_grad_batches=2",
        "+trainer.limit_train_batches=5",
        "model.train_step=static_eager",
        "data.loader=torch",
    ],
)
def test_settings_that_count_batches_are_refused(compose_train, override):
    cfg = compose_train([GROUPED, override])
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert f"{override.lstrip('+').split('=')[0]}=" in message
    assert "data.steps_per_batch=4" in message and "Set data.steps_per_batch=1" in message
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_the_loader_groups_the_same_batches_and_counts_them_on_resume():
    images, labels = torch.arange(10).view(10, 1, 1, 1), torch.arange(10)
    sampler = ShardedPermutation(10, shuffle=True, seed=3)
    single = [batch for batch, _ in TensorBatchLoader(images, labels, 3, sampler)]
    grouped_loader = TensorBatchLoader(images, labels, 3, sampler, steps_per_batch=2)
    groups = list(grouped_loader)
    assert len(grouped_loader) == len(groups) == 2
    assert all(isinstance(group, BatchGroup) for group in groups)
    # The same batches in the same order: 3, 3 | 3, 1 images.
    assert all(
        torch.equal(got, expected)
        for got, expected in zip([b for group in groups for b, _ in group], single, strict=True)
    )
    # After the first group two batches are handed out: a loader with one step per batch
    # resumes with the third.
    iterator = iter(grouped_loader)
    next(iterator)
    resumed = TensorBatchLoader(images, labels, 3, sampler)
    resumed.load_state_dict(grouped_loader.state_dict())
    assert all(
        torch.equal(got, expected)
        for got, expected in zip([b for b, _ in resumed], single[2:], strict=True)
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 8),
        (["trainer.gradient_clip_val=30"], 1),
        (["debug=fast"], 1),
        (["experiment=reference_mlp"], 1),
        (["trainer.devices=2"], 1),
        (["data.loader=torch"], 1),
        (["model.train_step=static_eager"], 1),
        (["+trainer.limit_train_batches=0.5"], 1),
        (["+trainer.limit_train_batches=1.0"], 8),
        (["+callbacks.model_checkpoint.every_n_train_steps=16"], 8),
        (["+callbacks.model_checkpoint.every_n_train_steps=20"], 1),
    ],
)
def test_the_default_is_8_steps_per_batch_where_no_setting_needs_one(
    compose_train, overrides, expected
):
    assert compose_train(overrides).data.steps_per_batch == expected


def test_a_nan_inside_a_group_names_its_step_and_batch(tmp_path, idx_root):
    """NaN images at step 5, the second batch of the second group of 4."""
    with pytest.raises(NonFiniteLossError) as info:
        run(tmp_path, idx_root, [GROUPED, *inject_nan_at(5)])
    assert "Non-finite training loss at step 5 (epoch 0, batch 5)" in str(info.value)
    emergency = tmp_path / "checkpoints" / "nonfinite_step_000005.ckpt"
    assert torch.load(emergency, weights_only=True)["global_step"] == 5


def test_skipped_nan_batches_skip_the_same_steps(tmp_path, idx_root):
    """nan_policy=skip over steps 3-5 (across a group end): the same run with 1 and 4."""
    nan = ["nan_policy=skip", *inject_nan_at(3, count=3)]
    one = run(tmp_path / "one", idx_root, ["data.steps_per_batch=1", *nan])
    assert_same_run(run(tmp_path / "four", idx_root, [GROUPED, *nan]), one)


@pytest.mark.parametrize(
    "data", ["mnist", "fashion_mnist", "cifar10", "dsprites", "celeba", "image_folder"]
)
def test_every_data_module_takes_8_steps_per_batch_by_default(tmp_path, data):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # image_folder has no default folder: any will do, nothing is read here.
        cfg = compose_data_option(tmp_path, data, [f"data.root={tmp_path}"])
    assert instantiate(cfg.data).steps_per_batch == 8
