"""The speed options: data on the training device, bf16 autocast, channels_last, compile.

All through real Hydra composition and a real Lightning Trainer on the generated IDX data.
"""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.profilers import SimpleProfiler

from helpers.events import written_scalars
from vae_lightning.callbacks import NonFiniteLossError
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.likelihoods import Bernoulli
from vae_lightning.models.objectives import ELBO, IWAE
from vae_lightning.profiling import NoProfiler
from vae_lightning.train import instantiate_named, model_from_config, train

QUIET = ["~callbacks.progress_bar", "~callbacks.images", "~logger", "test=false"]


class BatchDevices(L.Callback):
    """Records the device of every training batch as the LightningModule receives it."""

    def __init__(self) -> None:
        self.devices: set[torch.device] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.devices.add(batch[0].device)


def fit_with_datamodule(cfg) -> tuple[L.LightningDataModule, BatchDevices]:
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=cfg.optimizer)
    seen = BatchDevices()
    trainer = instantiate(cfg.trainer, callbacks=[seen], logger=False)
    trainer.fit(model, datamodule=datamodule)
    return datamodule, seen


def test_cpu_training_keeps_the_data_in_host_memory(compose_train):
    datamodule, seen = fit_with_datamodule(compose_train(["debug=fast", "trainer=cpu"]))
    assert datamodule.training_device == torch.device("cpu")
    assert {images.device for images, _ in datamodule.splits.values()} == {torch.device("cpu")}
    assert seen.devices == {torch.device("cpu")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_gathers_batches_on_the_gpu(compose_train):
    cfg = compose_train(["debug=fast", "trainer=gpu"])
    datamodule, seen = fit_with_datamodule(cfg)
    gpu = torch.device("cuda", 0)
    assert {images.device for images, _ in datamodule.splits.values()} == {gpu}
    # The loader itself yields GPU tensors: Lightning's transfer has nothing to copy.
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.device == labels.device == gpu and images.dtype == torch.uint8
    assert seen.devices == {gpu}


def test_gpu_trainer_config_is_tuned_for_speed(compose_train):
    cfg = compose_train(["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True


def bf16_net_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = instantiate(
        {"_target_": "vae_lightning.models.mlp_vae", "image_shape": [1, 28, 28]}, latent_dim=20
    )
    return net, torch.rand(64, 1, 28, 28).bernoulli()


def test_bf16_autocast_keeps_the_loss_terms_in_float32():
    """Summing 784 bf16 values would be off by whole nats; the terms must be float32 sums."""
    net, x = bf16_net_and_images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        terms = ELBO()(net, Bernoulli(), x, kl_weight=1.0)
        torch.manual_seed(1)  # the same draw: the network outputs the objective saw
        out = net(x)
    assert out.logits.dtype == torch.bfloat16  # autocast is really on
    assert all(term.dtype == torch.float32 for term in terms.by_name().values())
    # Reference: the same bf16 network outputs, reduced in float64.
    logits, mu, logvar = (t.double() for t in (out.logits, out.mu, out.logvar))
    rec = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.double(), reduction="none"
    )
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    assert terms.rec.item() == pytest.approx(rec.sum((1, 2, 3)).mean().item(), abs=1e-3)
    assert terms.kl.item() == pytest.approx(kl.sum(1).mean().item(), abs=1e-4)


def test_bf16_autocast_keeps_the_iwae_weights_in_float32():
    """The importance samples are drawn and weighed in float32 (decoded in bf16)."""
    net, x = bf16_net_and_images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = IWAE(k=3)(net, Bernoulli(), x, kl_weight=1.0)
    assert all(term.dtype == torch.float32 for term in terms.by_name().values())
    assert torch.isfinite(torch.stack(list(terms.by_name().values()))).all()


def test_bf16_mixed_training_runs_end_to_end(compose_train):
    metrics = train(compose_train(["debug=fast", "trainer.precision=bf16-mixed", *QUIET]))
    assert torch.isfinite(torch.tensor(metrics["val/elbo"]))
    assert metrics["val/elbo"] == pytest.approx(-(metrics["val/rec"] + metrics["val/kl"]))


class OptimizerKernel(L.Callback):
    """Records whether the optimizer Lightning trains with runs the fused kernels."""

    fused: bool | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.fused = trainer.optimizers[0].defaults.get("fused")


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [("32-true", None, True), ("32-true", 1.0, True), ("bf16-mixed", 1.0, False)],
)
def test_fused_optimizer_unless_lightning_cannot_clip_it(compose_train, precision, clip, fused):
    """The default optimizer is fused; under mixed precision with clipping Lightning refuses a
    fused optimizer ("performs unscaling of gradients internally"), so that run trains on the
    unfused kernels instead of failing."""
    overrides = ["debug=fast", f"trainer.precision={precision}", *QUIET]
    cfg = compose_train([*overrides, f"trainer.gradient_clip_val={clip or 'null'}"])
    kernel = OptimizerKernel()
    model = model_from_config(cfg)
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, _partial_=True)(
        callbacks=[kernel], logger=False, enable_checkpointing=False
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == trainer.num_training_batches > 0
    assert kernel.fused is fused


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_bf16_true_trains_and_tests_with_the_importance_sampled_nll(compose_train, objective):
    """bf16 weights take float32 images and float32 z samples (IWAE, test NLL) in their dtype."""
    overrides = ["debug=fast", "trainer.precision=bf16-true", f"objective={objective}"]
    metrics = train(compose_train([*overrides, "test_iwae_k=5", *QUIET, "test=true"]))
    for name in ("val/elbo", "test/elbo", "test/nll_iwae"):
        assert torch.isfinite(torch.tensor(metrics[name])), name
    # Bound order holds in bf16 too (loose: one tiny batch, bf16 decoder outputs).
    assert -metrics["test/nll_iwae"] >= metrics["test/elbo"] - 1.0


def conv_weights(module: VAELitModule) -> list[torch.Tensor]:
    return [p for name, p in module.net.named_parameters() if p.ndim == 4]


def test_channels_last_conv_trains_reloads_and_computes_the_same(compose_train, tmp_path):
    cfg = compose_train(["debug=fast", "model=conv", "model.channels_last=true", *QUIET])
    train(cfg)
    model = VAELitModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    weights = conv_weights(model)
    assert len(weights) == 6
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    # (A weight with one channel in dim 1, like the first conv's, is both layouts at once.)
    assert not any(w.is_contiguous() for w in weights if w.shape[1] > 1)
    # The same weights in the default layout give the same outputs.
    reference = VAELitModule(**{**model.hparams, "channels_last": False})
    reference.load_state_dict(model.state_dict())
    assert all(w.is_contiguous() for w in conv_weights(reference))
    model.eval()
    reference.eval()
    x = torch.rand(16, 1, 28, 28).bernoulli()
    with torch.no_grad():
        (mu, logvar), (ref_mu, ref_logvar) = model.net.encode(x), reference.net.encode(x)
        logits, ref_logits = model.net.decode(mu), reference.net.decode(mu)
    torch.testing.assert_close(mu, ref_mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logvar, ref_logvar, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # torch.compile on CPU: about a minute of compilation on 2 cores
def test_compiled_run_checkpoint_loads_alone(compose_train, tmp_path):
    metrics = train(compose_train(["debug=fast", "model.compile=true", *QUIET]))
    best = Path(tmp_path / "checkpoints" / "epoch_000.ckpt")
    model = VAELitModule.load_from_checkpoint(best)  # no other argument
    assert model.hparams.compile and model.net._compiled_call_impl is not None
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, limit_val_batches=2, accelerator="cpu"
    )
    datamodule = instantiate(compose_train(["debug=fast"]).data)
    (result,) = trainer.validate(model, datamodule=datamodule)
    assert result["val/elbo"] == pytest.approx(metrics["val/elbo"], abs=1e-3)


def test_tensor_and_torch_loaders_train_to_the_same_val_elbo(compose_train):
    """Same seed, same data: the two data paths differ only in the shuffle order.

    Across seeds this setting spreads over ~8 nats (measured: -285 to -294), so 10 nats is
    'within noise'; an untrained model sits below -540 and a broken path far from the other.
    """
    elbo = {}
    for loader in ("tensor", "torch"):
        overrides = [f"data.loader={loader}", "seed=1", "data.batch_size=25"]
        cfg = compose_train([*overrides, "trainer.max_epochs=3", "~callbacks", *QUIET[2:]])
        elbo[loader] = train(cfg)["val/elbo"]
    assert elbo["tensor"] > -320 and elbo["torch"] > -320
    assert elbo["tensor"] == pytest.approx(elbo["torch"], abs=10)


def train_step_events(cfg, log_every_step: bool) -> list[tuple[int, float]]:
    L.seed_everything(0)
    model = instantiate(cfg.model, optimizer=cfg.optimizer)
    if log_every_step:  # the reference: call self.log every step, let Lightning filter
        model._writes_step_logs = lambda: True
    trainer = instantiate(cfg.trainer, callbacks=[], logger=instantiate_named(cfg.logger))
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return written_scalars(Path(cfg.paths.output_dir) / "tensorboard", "train/loss")


def test_training_logs_only_on_written_steps_yet_writes_the_same_events(compose_train, tmp_path):
    base = ["debug=fast", "trainer.max_epochs=2", "trainer.log_every_n_steps=3", "~callbacks"]
    gated = train_step_events(compose_train([*base, f"paths.output_dir={tmp_path / 'a'}"]), False)
    every = train_step_events(compose_train([*base, f"paths.output_dir={tmp_path / 'b'}"]), True)
    assert [step for step, _ in gated] == [2, 5]  # 2 epochs of 4 batches, every 3rd step
    assert gated == every


def test_nan_guard_names_the_culprit_term_on_a_step_that_is_not_logged(compose_train):
    """Training logs every 50th step only; the guard still reports this step's terms."""
    cfg = compose_train(
        [
            *QUIET,
            "debug=fast",
            "trainer.log_every_n_steps=50",
            "+callbacks.nan_batch._target_=fault_injection.NaNBatches",
            "+callbacks.nan_batch.start=2",
        ]
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    assert "at step 2" in str(info.value)
    assert "train/rec=nan" in str(info.value) and "train/kl=nan" in str(info.value)


class TrainBatchCounter(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1


@pytest.mark.parametrize(
    ("override", "profiler_type"),
    [([], NoProfiler), (["trainer.profiler=simple"], SimpleProfiler)],
)
def test_no_op_profiler_still_calls_every_hook_and_a_real_one_can_be_picked(
    compose_train, override, profiler_type
):
    cfg = compose_train(["debug=fast", "trainer=cpu", *override])
    counter = TrainBatchCounter()
    trainer = instantiate(cfg.trainer, callbacks=[counter], logger=False)
    trainer.fit(instantiate(cfg.model, optimizer=cfg.optimizer), datamodule=instantiate(cfg.data))
    assert type(trainer.profiler) is profiler_type
    assert counter.batches == trainer.global_step > 0
    if profiler_type is SimpleProfiler:  # it timed each call of the hook
        durations = trainer.profiler.recorded_durations
        assert len(durations["[Callback]TrainBatchCounter.on_train_batch_end"]) == counter.batches
