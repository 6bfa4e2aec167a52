"""VAELitModule: the training logic around a pure VAE network. It knows no files."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor
from torchmetrics import CatMetric, MeanMetric

from vae_lightning import seeding
from vae_lightning.data.loaders import PreparedBatches
from vae_lightning.errors import ConfigError
from vae_lightning.loop_counts import loop_counts_to_groups, loop_counts_to_one_step_per_batch
from vae_lightning.lr_schedules import stagewise_factor
from vae_lightning.models.diagnostics import active_units
from vae_lightning.models.iwae import bits_per_dim, iwae_log_likelihood
from vae_lightning.models.likelihoods import Likelihood
from vae_lightning.models.linear_bernoulli import LinearBernoulliLogLikelihood
from vae_lightning.models.objectives import (
    ELBO,
    IWAE,
    ELBOTerms,
    Objective,
    Posterior,
    decoder_log_likelihood,
)
from vae_lightning.models.vae import VAE, VAEOutput
from vae_lightning.static_step import (
    StaticTrainingStep,
    make_capturable,
    optimizer_path,
    static_step_problem,
)

EVAL_STAGES = ("val", "test")
TERMS = tuple(name for name in ELBOTerms._fields if name != "extras")  # loss rec kl elbo bound
# The bound is a selection metric, logged for validation and test; per training step it would
# repeat train/elbo (ELBO) or -train/loss (IWAE at full weight).
TRAIN_TERMS = tuple(name for name in TERMS if name != "bound")
# Defaults for checkpoints written before likelihoods, objectives, priors and posteriors
# were configurable.
BERNOULLI = {"_target_": "vae_lightning.models.likelihoods.Bernoulli"}
PLAIN_ELBO = {"_target_": "vae_lightning.models.objectives.ELBO"}
STANDARD_PRIOR = {"_target_": "vae_lightning.models.priors.StandardNormal"}
GAUSSIAN_POSTERIOR = {"_target_": "vae_lightning.models.posteriors.GaussianPosterior"}


def train_values(terms: ELBOTerms) -> dict[str, Tensor]:
    """The terms a training step reports, as ``train/<name>``."""
    return {
        f"train/{name}": value
        for name, value in terms.by_name().items()
        if name in TRAIN_TERMS or name in terms.extras
    }


class VAELitModule(L.LightningModule):
    """Trains a VAE on its objective and logs the ELBO terms in nats per image.

    Arguments are plain data (dicts with ``_target_``), so checkpoints store only primitives
    and ``VAELitModule.load_from_checkpoint(path)`` needs nothing else.

    Args:
        net: config of a function or class returning a :class:`VAE` (e.g. ``mlp_vae``).
        optimizer: config of a ``torch.optim`` class, built with this module's parameters.
        latent_dim: size of z, passed on to ``net``.
        beta: weight of the KL term in the optimised loss (1 is the true ELBO); a warm-up or
            cyclical schedule of the objective multiplies it.
        compile: wrap the network in ``torch.compile`` (pays off on GPUs and for long runs;
            see docs/speed.md).
        channels_last: store the network's conv weights in NHWC memory format, which cuDNN
            and oneDNN prefer (conv models only; no effect on an MLP).
        likelihood: config of a :class:`Likelihood` (default Bernoulli): what the decoder's
            output means and the log p(x|z) every metric uses.
        objective: config of :class:`ELBO` (default) or :class:`IWAE`: what is optimised.
        prior: config of a :class:`Prior` p(z) (default N(0, I)), built with ``latent_dim``.
        posterior: config of a :class:`Posterior` q(z|x) (default the encoder's Gaussian; a
            flow transforms it), built with ``latent_dim``.
        test_iwae_k: importance samples per image for ``test/nll_iwae`` (0 skips it).
        iwae_chunk_rows: decoder rows per pass of that estimator; bounds its memory. Counted
            for one value per pixel channel: a likelihood whose decoder emits more (a mixture's
            weights, means and scales) gets proportionally fewer rows, the same memory.
        lr_stage_growth: > 0 trains in stages, stage i lasting ``lr_stage_growth``^i epochs
            at the optimizer's learning rate times ``lr_stage_decay``^i, for
            ``lr_num_stages`` stages, then held (Burda et al. 2016: 3, 10^(-1/7), 8);
            0 keeps the learning rate constant.
        train_step: how a training step runs. ``automatic`` (default): Lightning's automatic
            optimization. ``cuda_graph``: the whole step (forward, loss, backward, clipping,
            Adam's step) is captured once in a CUDA graph and replayed, with no Python
            between its kernels (one GPU; static_step.py says what it supports and why).
            ``static_eager``: the same step, from the same code, run op by op on any device:
            the same numbers as ``automatic`` (tested), for tests and for debugging a graph.
            Step counts, logs, checkpoints and resume are those of ``automatic``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        latent_dim: PositiveInt = 20,
        beta: NonNegativeFloat = 1.0,
        compile: bool = False,
        likelihood: dict[str, Any] | None = None,
        objective: dict[str, Any] | None = None,
        test_iwae_k: NonNegativeInt = 100,
        iwae_chunk_rows: PositiveInt = 16384,
        channels_last: bool = False,
        prior: dict[str, Any] | None = None,
        posterior: dict[str, Any] | None = None,
        lr_stage_growth: NonNegativeInt = 0,
        lr_stage_decay: PositiveFloat = 1.0,
        lr_num_stages: PositiveInt = 8,
        train_step: Literal["automatic", "static_eager", "cuda_graph"] = "automatic",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # A module: a learned Gaussian variance is a parameter, saved and optimised with the net.
        self.likelihood: Likelihood = instantiate(likelihood or BERNOULLI)
        image_channels = net["image_shape"][0]
        # Called, not instantiated with them: Hydra would turn the built modules into configs.
        self.net: VAE = instantiate(net, _partial_=True)(
            latent_dim=latent_dim,
            output_channels=self.likelihood.decoder_channels(image_channels),
            prior=instantiate(prior or STANDARD_PRIOR, latent_dim=latent_dim),
            posterior=instantiate(posterior or GAUSSIAN_POSTERIOR, latent_dim=latent_dim),
        )
        self.objective: Objective = instantiate(objective or PLAIN_ELBO)
        # Epoch means for evaluation, weighted by batch size and synced across DDP ranks, so
        # they are exact per-image averages over the whole split.
        # The objective's own terms (beta-TCVAE's mi, tc, dwkl) are logged like the others.
        self.epoch_means = torch.nn.ModuleDict(
            {
                f"{stage}_{term}": MeanMetric()
                for stage in EVAL_STAGES
                for term in (*TERMS, *self.objective.extra_terms)
            }
        )
        self.test_nll_iwae = MeanMetric()
        self.test_bits_per_dim = MeanMetric()
        self.test_posterior_means = CatMetric()  # E_q[z|x] of every test image, for active units
        self.last_train_values: dict[str, Tensor] = {}  # train/* of the latest training step
        self._checkpoint_step: int | None = None  # set when weights come from a checkpoint
        self._static_step: StaticTrainingStep | None = None  # built at the first train step
        self._unwritten_train_values: dict[str, Tensor] | None = None  # steps_per_batch > 1

    def forward(self, x: Tensor, labels: Tensor | None = None) -> VAEOutput:
        return self.net(x, labels)

    def decode_mean(self, code: Tensor, labels: Tensor | None = None) -> Tensor:
        """The mean image E[x|z] of codes of ``net.encode_code``/``net.sample_prior`` under
        the likelihood (pixel probabilities for Bernoulli)."""
        return self.likelihood.mean(self.net.decode_code(code, labels))

    @property
    def iwae_chunk_rows(self) -> int:
        """Decoder rows per pass of the IWAE estimator, for the decoder's values per row."""
        image_channels = self.hparams.net["image_shape"][0]
        values_per_channel = self.likelihood.decoder_channels(image_channels) / image_channels
        return max(1, int(self.hparams.iwae_chunk_rows / values_per_channel))

    @property
    def kl_estimator(self) -> str:
        """How ``*/kl`` is computed: ``closed_form`` or ``monte_carlo`` (one draw per image,
        log q(z|x) - log p(z) at the z the reconstruction term decodes)."""
        return "closed_form" if self.net.closed_form_kl else "monte_carlo"

    def batch_labels(self, batch: tuple[Tensor, Tensor]) -> Tensor | None:
        """The batch's labels for a conditional network, None for the others."""
        return batch[1] if self.net.conditional else None

    @property
    def kl_weight(self) -> float:
        """beta times the objective's warm-up/cyclical schedule at the weights' global step.

        In training (and its validation) that is the current step. When the weights were
        loaded from a checkpoint to be tested or evaluated (``trainer.test(ckpt_path=...)``,
        vae-eval), it is the checkpoint's step: ``*/loss`` is then the loss those weights were
        being trained on, the same number after training and in vae-eval.
        """
        return self.hparams.beta * self.objective.schedule(self.weights_step)

    @property
    def weights_step(self) -> int:
        """The optimizer step the current weights come from."""
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if self._checkpoint_step is None or fitting:
            return self.global_step
        return self._checkpoint_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step", 0))
        if not self.automatic_optimization and "loops" in checkpoint:
            loop_counts_to_groups(checkpoint["loops"], self.steps_per_batch)

    def on_fit_start(self) -> None:
        self._static_step = None  # a new fit may bring a new optimizer
        problem = self.static_step_problem()
        if problem:
            raise ConfigError(problem)
        # The data module's training split, where it exposes one (objective.dataset_size).
        splits = getattr(self.trainer.datamodule, "splits", None) or {}
        if "train" in splits:
            problem = self.objective.data_problem(len(splits["train"][0]))
            if problem:
                raise ConfigError(problem)

    def on_fit_end(self) -> None:
        self._checkpoint_step = None  # the weights are now those of the last step

    # Evaluation draws from a forked RNG, seeded per batch (seeding.py says why and how).
    def _enter_eval_rng(self) -> None:
        self._eval_rng = seeding.fork_for_evaluation(self.device)

    def _exit_eval_rng(self) -> None:
        self._eval_rng.close()

    on_validation_epoch_start = on_test_epoch_start = _enter_eval_rng
    on_validation_epoch_end = _exit_eval_rng

    def on_test_epoch_end(self) -> None:
        self._exit_eval_rng()
        self.log("test/active_units", float(active_units(self.test_posterior_means.compute())))
        self.test_posterior_means.reset()

    def eval_batch_seed(self, batch_idx: int) -> int:
        return seeding.eval_batch_seed(batch_idx, self.trainer.world_size, self.global_rank)

    def seed_eval_batch(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        seeding.seed_eval_batch(batch_idx, self.trainer.world_size, self.global_rank)

    on_validation_batch_start = on_test_batch_start = seed_eval_batch

    def setup(self, stage: str) -> None:
        if stage == "fit":
            seeding.seed_training_stream(self.global_rank)

    def configure_model(self) -> None:
        # Called by fit/validate/test and by load_from_checkpoint, so reloaded models match.
        if self.hparams.channels_last:
            # Weights in NHWC make every conv pick the NHWC kernels (inputs have 1 channel,
            # for which both layouts are the same memory). In place: parameters keep identity.
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            self.net.compile()  # in place: parameter names, hence checkpoints, stay the same

    def _shared_step(
        self, batch: tuple[Tensor, Tensor], stage: str, posterior: Posterior | None = None
    ) -> Tensor:
        images, labels = batch[0], self.batch_labels(batch)
        kl_weight = self.kl_weight
        terms = self.objective(
            self.net,
            self.likelihood,
            images,
            kl_weight,
            posterior=posterior,
            labels=labels,
            step=self.weights_step,
        )
        logged = terms.by_name()
        if stage == "train":
            # Per-step values of this rank; no device sync until the logger flushes.
            values = {name: value.detach() for name, value in train_values(terms).items()}
            self.last_train_values = values  # logged or not (the NaN guard names the culprit)
            if self._writes_step_logs():
                if self.objective.schedule.active:
                    # torch.full hands the float to a fill kernel: no host-device copy or sync.
                    values = {
                        **values,
                        "train/kl_weight": torch.full((), kl_weight, device=self.device),
                    }
                self._log_train_values(values, batch_size=len(images))
            return terms.loss
        for name, value in logged.items():
            metric = self.epoch_means[f"{stage}_{name}"]
            metric.update(value.detach(), len(images))
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return terms.loss

    def _log_train_values(self, values: dict[str, Tensor], batch_size: int) -> None:
        """This step's train/* values, to the loggers at this step and to callback_metrics.

        Lightning writes what ``self.log`` collects once per batch; with several optimizer
        steps per batch they are written by :meth:`_write_train_values`, through the same
        connector, so every logger sees the calls of one step per batch.
        """
        if self.automatic_optimization:
            self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)
            return
        self._unwritten_train_values = values  # written after the optimizer step
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size, logger=False)

    def _write_train_values(self) -> None:
        """The step's train/* values (if it logs), after its optimizer step as Lightning
        writes them: at the count before the step, with what callbacks logged on the step's
        hooks (the NaN guard's skip count)."""
        values, self._unwritten_train_values = self._unwritten_train_values, None
        if values is not None:
            connector = self.trainer._logger_connector
            logged = {**connector.metrics["log"], **values}
            connector.log_metrics(logged, step=self.global_step - 1)

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes this training step's values to the loggers.

        It does so every ``trainer.log_every_n_steps`` optimizer steps (and when stopping);
        in between, a ``self.log`` call only does Python bookkeeping (~0.3 ms per value),
        about 1 ms per step for our four values on a 2-core CPU, where an MLP step takes
        5-10 ms. Skipping it changes nothing that is written; ``trainer.callback_metrics``
        then holds the last written step's ``train/*`` and ``last_train_values`` this step's.
        """
        trainer = self._trainer
        if trainer is None:  # a bare call outside fit: let self.log decide what to do
            return True
        every = trainer.log_every_n_steps
        return (
            bool(trainer.fast_dev_run)
            or trainer.should_stop
            or (every > 0 and (self.global_step + 1) % every == 0)
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            self._grouped_training_steps(batch)
            return None
        if self.hparams.train_step != "automatic":
            return self._static_training_step(batch)
        return self._shared_step(batch, "train")

    # ------------------------------------------------ data.steps_per_batch > 1
    # The data module hands each training_step a group of K batches (PreparedBatches), and
    # this module takes one optimizer step per batch with Lightning's manual optimization:
    # Lightning's per-batch work (fetch, ~15 hook calls into every callback, the closure,
    # progress, logging) is then paid once per K steps, the CPU MLP's main overhead. What
    # Lightning counts per batch is kept per optimizer step, so that logs and checkpoints
    # are those of K = 1 (tested): global_step counts optimizer steps in both modes; the
    # train/* values of every log_every_n_steps-th step are written at that step; and the
    # loop's logging step (_batches_that_stepped, which Lightning advances by one per batch
    # and writes val/* and test/* at) is set to the step count. Where a setting counts
    # batches or needs automatic optimization, the default ${steps_per_batch:8} is 1 and an
    # explicit K > 1 is refused (config_rules.py).
    @property
    def steps_per_batch(self) -> int:
        """Optimizer steps per training batch: the attached data module's ``steps_per_batch``
        (1 without a trainer or for a data module without one)."""
        trainer = self._trainer
        return getattr(trainer.datamodule, "steps_per_batch", 1) if trainer is not None else 1

    @property
    def automatic_optimization(self) -> bool:
        return self.steps_per_batch == 1

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:  # LightningModule has a setter
        if not value:
            raise ValueError("VAELitModule chooses its optimization from data.steps_per_batch")

    def _grouped_training_steps(self, batches: PreparedBatches | tuple[Tensor, Tensor]) -> None:
        """One optimizer step per batch of the group, in the order automatic optimization
        takes it for one batch: forward, zero_grad, backward (with its hooks), step (with
        on_before_optimizer_step, hence the NaN guard)."""
        trainer = self.trainer
        optimizer = self.optimizers()
        group = batches if isinstance(batches, PreparedBatches) else (batches,)
        for batch in group:
            if 0 <= trainer.max_steps <= self.global_step:
                break
            loss = self._shared_step(batch, "train")
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self._write_train_values()
        # Lightning adds one after this batch, then logs val/* at the value before that.
        trainer.fit_loop.epoch_loop._batches_that_stepped = self.global_step - 1

    # ------------------------------------------------ train_step=static_eager / cuda_graph
    # Lightning's automatic optimization stays in charge of the loop, so global_step, the
    # progress counters in checkpoints, the on_before/after_backward hooks and the outputs of
    # training_step are those of `automatic`. Its loop calls optimizer_step(closure); the
    # closure calls training_step, then zero_grad and backward on the returned loss. Here
    # training_step runs the whole step (StaticTrainingStep: zero_grad, forward, backward,
    # clipping, optimizer step, one graph replay on a GPU), and the three other hooks do
    # nothing. Not run: on_before_optimizer_step (the optimizer step is inside the graph; the
    # configuration check refuses callbacks that need it).
    def static_step_problem(self) -> str | None:
        """Why this run cannot use its ``train_step`` mode, or None (see static_step.py)."""
        if self.hparams.train_step == "automatic":
            return None
        trainer = self.trainer
        before_step = [
            type(callback).__name__
            for callback in trainer.callbacks
            if type(callback).on_before_optimizer_step is not L.Callback.on_before_optimizer_step
        ]
        return static_step_problem(
            self.hparams.train_step,
            device_type=self.device.type,
            world_size=trainer.world_size,
            precision=str(trainer.precision),
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            optimizer_target=optimizer_path(self.hparams.optimizer),
            lr_scheduled=bool(self.hparams.lr_stage_growth or trainer.lr_scheduler_configs),
            objective_supported=type(self.objective) in (ELBO, IWAE),
            kl_schedule_active=self.objective.schedule.active,
            compiled=self.hparams.compile,
            optimizer_step_hooks=before_step,
        )

    def _static_training_step(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch[0], self.batch_labels(batch)
        if self._static_step is None:
            self._static_step = self._build_static_step()
        values = self._static_step(images, labels)  # graphed: overwritten by the next replay
        self.last_train_values = dict(values)
        if self._writes_step_logs():
            # Copies: the logger reads them after this step, callback_metrics keeps them.
            logged = {name: value.clone() for name, value in values.items()}
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=len(images))
        return values["train/loss"]

    def _build_static_step(self) -> StaticTrainingStep:
        trainer = self.trainer
        optimizer = trainer.optimizers[0]
        capture = self.hparams.train_step == "cuda_graph"
        if capture:
            make_capturable(optimizer)  # also after a checkpoint restored the optimizer
        # A constant: static_step_problem refuses KL schedules and objectives with a schedule
        # of their own (ELBO and IWAE do not read the step).
        kl_weight = self.kl_weight

        def forward(images: Tensor, labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
            terms = self.objective(self.net, self.likelihood, images, kl_weight, labels=labels)
            return terms.loss, train_values(terms)

        def clip() -> None:  # as Lightning's precision plugin calls it, with its settings
            self.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )

        return StaticTrainingStep(forward, optimizer, clip=clip, capture=capture)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        if self.hparams.train_step == "automatic":
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        optimizer_closure()  # training_step: the whole step, optimizer step included

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        if self.hparams.train_step == "automatic":
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self.hparams.train_step == "automatic":
            super().backward(loss, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints as an automatic run with one step per batch writes them, so that they
        resume in any mode: loop counters per step (data.steps_per_batch > 1, loop_counts.py);
        for a graphed run, Adam's ``capturable`` as configured and its step counters on the
        host (copies: the live state is the graph's)."""
        if not self.automatic_optimization and "loops" in checkpoint:
            loop_counts_to_one_step_per_batch(checkpoint["loops"])
        if self.hparams.train_step != "cuda_graph":
            return
        configured = bool(self.hparams.optimizer.get("capturable", False))
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group["capturable"] = configured
            if not configured:
                state["state"] = {
                    index: {**values, "step": values["step"].cpu()} if "step" in values else values
                    for index, values in state["state"].items()
                }

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The ELBO terms, plus the importance-weighted log p(x) and the posterior means.

        The batch is encoded once; the objective and the estimator share (mu, logvar). The
        importance samples come from their own generator, seeded like the batch (so under
        DDP too, test/nll_iwae is that of one process) but on a stream apart from the ELBO's.
        """
        images, labels = batch[0], self.batch_labels(batch)
        mu, logvar = self.net.encode(images, labels)
        self._shared_step(batch, "test", posterior=(mu, logvar))
        self.test_posterior_means.update(mu.float())
        k = self.hparams.test_iwae_k
        if k:
            # The Bernoulli MLP's shortcut where it applies (same numbers, less work).
            log_px_given_z = LinearBernoulliLogLikelihood.of(
                self.net, self.likelihood, labels, samples_per_batch=k * len(images)
            ) or (lambda z, x: decoder_log_likelihood(self.net, self.likelihood, z, x, labels))
            log_px = iwae_log_likelihood(
                images,
                mu,
                logvar,
                log_px_given_z,
                k=k,
                chunk_rows=self.iwae_chunk_rows,
                generator=seeding.iwae_generator(self.device, self.eval_batch_seed(batch_idx)),
                draw_latents=self.net.draw_latents,
            )
            self.test_nll_iwae.update(-log_px)
            self.log("test/nll_iwae", self.test_nll_iwae, on_step=False, on_epoch=True)
            # Per image, so the pixel count comes with each batch: the same mean as
            # bits_per_dim(test/nll_iwae), all images having the same size.
            self.test_bits_per_dim.update(bits_per_dim(-log_px, images[0].numel()))
            self.log("test/bits_per_dim", self.test_bits_per_dim, on_step=False, on_epoch=True)

    def unfused_for_clipping(self) -> dict[str, bool]:
        """``{"fused": False}`` where Lightning would refuse to clip a fused optimizer's
        gradients: under mixed precision it takes a fused step for one that unscales them
        itself (true of fp16's GradScaler, not of bf16) and raises. The unfused kernels do
        the same maths, about 1.4 ms slower per MLP step on a 2-core CPU."""
        trainer = self._trainer
        clips = trainer is not None and bool(trainer.gradient_clip_val)
        if clips and self.hparams.optimizer.get("fused") and "mixed" in str(trainer.precision):
            return {"fused": False}
        return {}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = instantiate(
            self.hparams.optimizer, params=self.parameters(), **self.unfused_for_clipping()
        )
        growth = self.hparams.get("lr_stage_growth", 0)  # absent from older checkpoints
        if not growth:
            return optimizer
        decay, stages = self.hparams.lr_stage_decay, self.hparams.lr_num_stages
        # A function of the epoch alone: Lightning restores the epoch count on resume.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: stagewise_factor(epoch, growth, decay, stages)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }
