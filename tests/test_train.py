"""End to end: `vae-train` runs, writes TensorBoard events and checkpoints that load alone."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from helpers.data import idx_data, write_split
from helpers.events import scalar_series, scalars, written_images
from helpers.paths import FASHION_MNIST, SHARED_MNIST
from helpers.runs import vae_train
from vae_lightning.data.idx import read_idx
from vae_lightning.lit_module import VAELitModule
from vae_lightning.train import train

SCALAR_TAGS = {
    f"{stage}/{term}" for stage in ("train", "val") for term in ("loss", "rec", "kl", "elbo")
}


def test_vae_train_cli_end_to_end(tmp_path, idx_root):
    run_dir = tmp_path / "run"
    result = vae_train(
        [
            "debug=fast",
            *idx_data(idx_root),
            f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=2",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Run dir:          {run_dir}" in result.stderr + result.stdout
    assert "tensorboard --logdir" in result.stderr + result.stdout

    logged = scalars(run_dir)
    assert set(logged) >= SCALAR_TAGS
    assert "epoch" not in logged  # Lightning's automatic epoch card is left out
    assert {"test/elbo", "test/rec", "test/kl", "test/loss"} <= set(logged)
    assert {"test/nll_iwae", "test/bits_per_dim", "test/active_units"} <= set(logged)
    (elbo,), (nll,) = logged["test/elbo"], logged["test/nll_iwae"]
    assert elbo <= -nll  # IWAE_100 is tighter than the ELBO
    (bpd,) = logged["test/bits_per_dim"]
    assert bpd == pytest.approx(nll / (784 * math.log(2)), rel=1e-6)
    (active,) = logged["test/active_units"]
    assert active == int(active) and 0 <= active <= 20
    for tag in SCALAR_TAGS:
        assert logged[tag] and all(torch.isfinite(torch.tensor(logged[tag])))
    assert len(logged["val/elbo"]) == 2  # one per epoch
    assert len(logged["train/loss"]) == 2 * 4  # every step: 500 images = 4 batches
    log_dir = run_dir / "tensorboard"
    for tag in ("val/reconstructions", "val/samples"):
        assert len(written_images(log_dir, tag)) == 2
    recon = written_images(log_dir, "val/reconstructions")[-1]
    samples = written_images(log_dir, "val/samples")[-1]
    # 2 rows (inputs above reconstructions) of 8 images; 8x8 samples; make_grid pads by 2.
    assert (recon.height, recon.width) == (2 + 2 * 30, 2 + 8 * 30)
    assert (samples.height, samples.width) == (2 + 8 * 30, 2 + 8 * 30)

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and "epoch_001.ckpt" in checkpoints


def test_checkpoint_loads_alone_and_reproduces_val_elbo(compose_train, tmp_path):
    cfg = compose_train(["debug=fast", "~callbacks.progress_bar", "test=false"])
    metrics = train(cfg)
    best = tmp_path / "checkpoints" / "epoch_000.ckpt"
    assert best.is_file()

    model = VAELitModule.load_from_checkpoint(best)  # no other argument, weights_only default
    datamodule = instantiate(cfg.data)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, limit_val_batches=2, accelerator="cpu"
    )
    (result,) = trainer.validate(model, datamodule=datamodule)
    assert result["val/elbo"] == pytest.approx(metrics["val/elbo"], abs=1e-4)
    assert result["val/loss"] == pytest.approx(-result["val/elbo"], abs=1e-4)  # beta = 1


def test_non_default_likelihood_and_objective_checkpoint_loads_alone(compose_train, tmp_path):
    """A learned Gaussian variance and the IWAE objective survive the round trip."""
    cfg = compose_train(
        [
            "debug=fast",
            "~callbacks.progress_bar",
            "test=false",
            "likelihood=gaussian",
            "likelihood.variance=learned",
            "objective=iwae",
            "objective.k=3",
        ]
    )
    assert cfg.data.binarize == "none"  # the likelihood picked grey levels
    metrics = train(cfg)
    model = VAELitModule.load_from_checkpoint(tmp_path / "checkpoints" / "epoch_000.ckpt")
    assert type(model.likelihood).__name__ == "Gaussian" and model.objective.k == 3
    trained_log_std = model.likelihood.log_std.detach().clone()
    assert trained_log_std.shape == (1, 28, 28)
    assert (trained_log_std != math.log(0.1)).any()  # it was learned, and saved
    (result,) = L.Trainer(
        logger=False, enable_progress_bar=False, limit_val_batches=2, accelerator="cpu"
    ).validate(model, datamodule=instantiate(cfg.data))
    assert result["val/elbo"] == pytest.approx(metrics["val/elbo"], abs=1e-3)


def test_kl_warmup_changes_the_logged_loss_exactly(compose_train, tmp_path):
    """Per step: train/kl_weight = beta * step / warmup and train/loss = rec + weight * kl."""
    cfg = compose_train(
        ["debug=fast", "~callbacks", "test=false", "model.beta=2", "objective.kl_warmup_steps=4"]
    )
    train(cfg)
    weights = dict(scalar_series(tmp_path, "train/kl_weight"))
    assert weights == {0: 0.0, 1: 0.5, 2: 1.0, 3: 1.5}  # 4 batches of 128 in 500 images
    rec = dict(scalar_series(tmp_path, "train/rec"))
    kl = dict(scalar_series(tmp_path, "train/kl"))
    for step, loss in scalar_series(tmp_path, "train/loss"):
        assert loss == pytest.approx(rec[step] + weights[step] * kl[step], rel=1e-6)


def test_beta_changes_loss_but_not_elbo(compose_train):
    cfg = compose_train(["debug=fast", "~callbacks", "~logger", "test=false", "model.beta=4"])
    metrics = train(cfg)
    expected = metrics["val/rec"] + 4 * metrics["val/kl"]
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/elbo"] == pytest.approx(
        -(metrics["val/rec"] + metrics["val/kl"]), rel=1e-5
    )


def real_data_root(tmp_path: Path) -> tuple[str, list[str]]:
    """Fashion-MNIST when installed, else the MNIST test split split 8000/2000 into IDX files."""
    if FASHION_MNIST.is_dir():
        return str(FASHION_MNIST), ["data=fashion_mnist", "data.val_size=5000"]
    if not SHARED_MNIST.is_dir():
        pytest.skip("no real data: neither ../shared/data/mnist nor dataset-fashion-mnist")
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz").numpy()
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").numpy()
    write_split(tmp_path / "mnist", "train", images[:8000], labels[:8000], gz=True)
    write_split(tmp_path / "mnist", "test", images[8000:], labels[8000:], gz=True)
    return str(tmp_path / "mnist"), ["data.val_size=1000"]


def test_real_data_val_elbo_improves(compose_train, tmp_path):
    root, overrides = real_data_root(tmp_path)
    cfg = compose_train(
        [
            *overrides,
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=60",
            "test=false",
            "~callbacks.progress_bar",
            "~callbacks.images",
        ],
        data_root=root,
    )
    train(cfg)
    elbo = scalars(tmp_path)["val/elbo"]
    assert len(elbo) == 3
    assert elbo[0] < elbo[1] < elbo[2]
    assert elbo[-1] > -300  # a binarized 28x28 image under a trained VAE: well below 784 ln2
