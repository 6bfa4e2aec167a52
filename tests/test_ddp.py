"""Data-parallel training on 2 CPU processes (gloo), as `vae-train trainer=ddp` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers.data import idx_data
from helpers.events import written_images, written_scalars
from helpers.runs import job_dirs, output, tensorboard_runs, vae_train
from vae_lightning.data import MNISTDataModule
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.diagnostics import active_units

SEED = 12345
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"seed={SEED}"]


def data_args(idx_root: Path) -> list[str]:
    # 500 training images: 250 per rank, 2 batches of 128 each. 100 validation images in
    # batches of 30: rank 0 evaluates batches 0 and 2 (60 images), rank 1 batches 1 and 3.
    return [
        *idx_data(idx_root),
        "data.eval_batch_size=30",
        "~callbacks.progress_bar",
    ]


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_two_process_ddp_run_is_correct(tmp_path, idx_root):
    run_dir, probe_dir = tmp_path / "run", tmp_path / "probe"
    args = [
        *DDP,
        *data_args(idx_root),
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "test=false",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={tmp_path / 'outputs'}",
        "+callbacks.probe._target_=rank_probe.RankProbe",
        f"+callbacks.probe.folder={probe_dir}",
    ]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, output(result)
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Both processes ran this one job in this one folder: rank 1 logs next to rank 0 and
    # created no run dir of its own.
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "outputs").exists()

    # The sampler splits the training set: each epoch, disjoint halves covering all 500.
    for epoch in (0, 1):
        shards = [set(r["train_indices"][epoch]) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 250
        assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(500))
    assert ranks[0]["train_indices"][0] != ranks[0]["train_indices"][1]  # reshuffled
    # Evaluation is dealt out in whole batches of the single-process order.
    assert [r["val_batch_sizes"] for r in ranks] == [[30, 30] * 2, [30, 10] * 2]

    # Binarization and reparameterisation noise: a stream per rank, seeded seed + rank.
    assert [r["initial_seed"] for r in ranks] == [SEED, SEED + 1]

    # Rank 0 alone writes: one TensorBoard run, one report, images once per epoch.
    tensorboard = run_dir / "tensorboard"
    (run_folder,) = {path.parent for path in event_files(tensorboard)}  # one TensorBoard run
    assert run_folder.parent == tensorboard
    assert len(written_scalars(tensorboard, "train/loss")) == 2 * 2  # 2 epochs x 2 batches
    assert len(written_scalars(tensorboard, "val/elbo")) == 2
    assert len(written_images(tensorboard, "val/reconstructions")) == 2
    assert len(written_images(tensorboard, "val/traversals")) == 2
    assert (result.stdout + result.stderr).count("Run dir:") == 1
    assert (result.stdout + result.stderr).count("Report:") == 1
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} <= {
        "epoch_000.ckpt",
        "epoch_001.ckpt",
        "last.ckpt",
    }

    # The val metrics logged under DDP are those of one process over the same validation
    # set: the last checkpoint, validated here on one CPU, gives the same numbers.
    model = VAELitModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    datamodule = MNISTDataModule(
        root=str(idx_root), download=False, val_size=100, eval_batch_size=30
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    for term in ("loss", "rec", "kl", "elbo"):
        _, logged = written_scalars(tensorboard, f"val/{term}")[-1]
        assert single[f"val/{term}"] == pytest.approx(logged, rel=1e-6, abs=1e-5), term

    # val/active_units comes from rank 0's fixed images (its shard: validation batches 0 and
    # 2), counted once: the other rank adds 0.
    datamodule.setup()
    images = datamodule.splits["val"][0].float() / 255
    with torch.no_grad():
        mu, _ = model.net.encode(torch.cat([images[0:30], images[60:90]]))
    assert written_scalars(tensorboard, "val/active_units")[-1][1] == active_units(mu)


@pytest.mark.slow
def test_ddp_jobs_inside_a_multirun_each_train_once_in_their_own_folder(tmp_path, idx_root):
    """Lightning re-runs the command line for rank 1; it must not re-run the sweep."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        *DDP,
        *data_args(idx_root),
        "model.latent_dim=2,8",
        "debug=fast",
        "test=false",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, output(result)

    # Two jobs, no third from a rank-1 copy of the sweep, nothing outside the sweep folder.
    jobs = job_dirs(sweep_dir)
    assert [job.name for job in jobs] == ["0", "1"]
    assert not (tmp_path / "outputs").exists()
    assert output(result).count("Initializing distributed: GLOBAL_RANK: 1") == 2
    for job, latent_dim in zip(jobs, (2, 8), strict=True):
        assert (job / "train_ddp_process_1.log").is_file()
        (run,) = tensorboard_runs(job)
        assert f"model.latent_dim={latent_dim}" in run.name.split(",")
        assert len({path.name.split(".")[-2] for path in event_files(run)}) == 1  # one pid
        hparams = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)[
            "hyper_parameters"
        ]
        assert hparams["latent_dim"] == latent_dim


def test_small_eval_split_is_cut_into_enough_batches_for_every_rank(idx_root):
    datamodule = MNISTDataModule(root=str(idx_root), download=False, eval_batch_size=1000)
    assert datamodule._eval_batch_size("val", 5000, world=1) == 1000
    assert datamodule._eval_batch_size("val", 5000, world=4) == 1000
    with pytest.warns(UserWarning, match="evaluated in batches of 625"):
        assert datamodule._eval_batch_size("val", 5000, world=8) == 625
    assert datamodule._eval_batch_size("val", 300, world=1) == 300  # one batch, as before
