"""Entry point: ``vae-train [overrides]`` or ``python -m vae_lightning.train``.

``train(cfg)`` does the work and can be called in-process (tests, notebooks); ``main`` is the
thin Hydra wrapper that returns the optimised metric for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, open_dict

from vae_lightning.checkpoints import load_checkpoint
from vae_lightning.config_checks import build_checked_model, check_config
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.cuda_probe import skip_nvml_probe_without_gpu
from vae_lightning.errors import UserError, report_user_errors
from vae_lightning.hparams import log_hparams
from vae_lightning.report import write_report_after_training
from vae_lightning.run_dir import accepts_resume, requeued_checkpoint, save_run_record
from vae_lightning.run_layout import event_folders
from vae_lightning.seeding import seed_everything
from vae_lightning.startup import freeze_imported_objects
from vae_lightning.sweeps import in_multirun, multirun_job, record_failure

log = logging.getLogger(__name__)


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``{name: {_target_: ...}}`` entry of a callbacks/logger group."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def model_from_config(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of ``cfg.model``, given the groups it is built with."""
    return instantiate(
        cfg.model,
        optimizer=cfg.optimizer,
        likelihood=cfg.likelihood,
        objective=cfg.objective,
        prior=cfg.get("prior"),
        posterior=cfg.get("posterior"),
        test_iwae_k=cfg.test_iwae_k,
    )


def checked_model(cfg: DictConfig) -> L.LightningModule:
    """Check ``cfg``, then build its model and run it once on the data's shape, as vae-train
    does before reading any data: a ConfigError says what is wrong."""
    check_config(cfg)
    return build_checked_model(cfg, lambda: model_from_config(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured VAE, then test its best checkpoint; return the final metrics.

    Everything that can be wrong with the config, the data files or the checkpoint to resume
    from is checked before the first file is written into the run dir.
    """
    check_config(cfg)  # and warns when the likelihood does not fit the data
    resume_requeued_job(cfg)
    # A corrupt checkpoint fails here with a clear message rather than inside Lightning.
    resume_step = None
    if cfg.get("ckpt_path"):
        checkpoint = load_checkpoint(cfg.ckpt_path)
        refuse_finished_run(checkpoint, cfg)
        resume_step = checkpoint["global_step"]
    seed_everything(cfg.get("seed"))
    model = build_checked_model(cfg, lambda: model_from_config(cfg))
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()  # missing, corrupt or too small data fails here, not mid-fit
    datamodule.setup("fit")
    save_run_record(cfg)
    loggers = instantiate_loggers(cfg.get("logger"), resume_step)
    # Built objects are handed to the Trainer directly: keyword arguments of `instantiate`
    # would go through OmegaConf, which turns dataclass instances (our callbacks) into configs.
    make_trainer = instantiate(cfg.trainer, _partial_=True)
    trainer: L.Trainer = make_trainer(
        callbacks=instantiate_named(cfg.get("callbacks")), logger=loggers or False
    )
    skip_nvml_probe_without_gpu()  # after the Trainer has looked for GPUs: see cuda_probe.py
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    metrics.update(log_best_monitored_value(trainer))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({name: float(value) for name, value in trainer.callback_metrics.items()})
    if cfg.get("hparams_tab"):
        log_hparams(trainer, cfg, metrics, **cfg.hparams_tab)
    report(cfg, metrics, best)
    if cfg.get("report"):
        write_report_after_training(trainer, Path(cfg.paths.output_dir))
    return metrics


def resume_requeued_job(cfg: DictConfig) -> None:
    """A SLURM job started again after a requeue continues its run dir's ``last.ckpt`` (see
    run_dir.requeued_checkpoint and docs/slurm-preemption.md), unless given a ckpt_path."""
    if cfg.get("ckpt_path"):
        return
    checkpoint = requeued_checkpoint(cfg.paths.output_dir)
    if checkpoint is not None:
        rank_zero_info(f"Requeued SLURM job: resuming from {checkpoint}")
        with open_dict(cfg):
            cfg.ckpt_path = str(checkpoint)


BEST_PREFIX = "best/"


def log_best_monitored_value(trainer: L.Trainer) -> dict[str, float]:
    """``best/<monitor>``: the best value the checkpoint callback saw, i.e. the score of the
    checkpoint that is tested and kept. Written to the loggers at the last step (for the
    HParams tab and the sweep report) and returned (for the sweeper), so runs are ranked
    on the very epoch that is selected, not on the last one."""
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None)
    if score is None:
        return {}
    best = {f"{BEST_PREFIX}{callback.monitor}": float(score)}
    for logger in trainer.loggers:
        logger.log_metrics(best, step=trainer.global_step)
    return best


def refuse_finished_run(checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """A checkpoint that has trained ``trainer.max_epochs`` epochs has nothing left to train:
    say so, and how to train it further, instead of re-running the test phase (or Lightning's
    error when max_epochs is now smaller)."""
    max_epochs = cfg.trainer.get("max_epochs")
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    trained = progress.get("current", {}).get("processed")
    if max_epochs is None or max_epochs < 0 or trained is None or trained < max_epochs:
        return
    raise UserError(
        f"The checkpoint {cfg.ckpt_path} has already trained {trained} epochs and "
        f"trainer.max_epochs={max_epochs}, so there is nothing left to train and nothing was "
        f"written. To train it further, resume with more epochs, e.g. `vae-train resume=... "
        f"trainer.max_epochs={trained + 10}`; to evaluate it, `vae-eval ckpt_path="
        f"{cfg.ckpt_path}`."
    )


def instantiate_loggers(group: DictConfig | None, resume_step: int | None) -> list[Any]:
    """The loggers; when resuming, TensorBoard ones continue the run's own TensorBoard run.

    The run's folder under ``tensorboard/`` is named by its overrides, which the resumed
    launch (``resume=``, maybe with new overrides) would not recompute: the folder that
    already holds the run's events is the one to continue. A run killed hard (no time to
    save) logged steps past its last checkpoint, and the resumed run logs them again:
    ``purge_step`` (a SummaryWriter argument) makes TensorBoard drop events at or after that
    step from the earlier event files, so each curve shows every step once.
    """
    loggers = []
    for node in (group or {}).values():
        if not node or "_target_" not in node:
            continue
        resuming = {}
        if resume_step is not None and issubclass(get_class(node._target_), TensorBoardLogger):
            resuming["purge_step"] = resume_step
            existing = event_subfolders(Path(node.save_dir) / node.name)
            if len(existing) == 1:
                resuming["version"] = existing[0]
        loggers.append(instantiate(node, **resuming))
    return loggers


def event_subfolders(log_root: Path) -> list[str]:
    """Folders under a TensorBoard logger's root that hold event files, relative to it
    ("" for the root itself)."""
    return sorted(
        "" if folder == log_root else str(folder.relative_to(log_root))
        for folder in event_folders(log_root)
    )


def report(cfg: DictConfig, metrics: dict[str, float], best_checkpoint: str) -> None:
    """Where the run went and how it did, printed once (rank 0)."""
    lines = [
        f"Run dir:          {cfg.paths.output_dir}",
        f"Best checkpoint:  {best_checkpoint or '(none saved)'}",
    ]
    if "best/val/bound" in metrics:
        lines.append(f"Best val/bound:   {metrics['best/val/bound']:.2f} nats per image")
    for name in ("val/elbo", "test/elbo"):
        if name in metrics:
            lines.append(f"Final {name + ':':<11} {metrics[name]:.2f} nats per image")
    # In a sweep, the sweep folder: TensorBoard then lists its jobs side by side.
    logdir = HydraConfig.get().sweep.dir if in_multirun() else cfg.paths.log_dir
    lines.append(f"TensorBoard:      tensorboard --logdir {logdir}")
    rank_zero_info("\n".join(lines))


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric named by ``cfg.optimized_metric`` (what a sweeper ranks jobs by): its best
    value over the run when the checkpoint callback monitors it, else its last value."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if f"{BEST_PREFIX}{name}" in metrics:
        return metrics[f"{BEST_PREFIX}{name}"]
    if name not in metrics:
        raise ValueError(
            f"optimized_metric={name!r} was not logged by this run, so a sweeper cannot rank "
            f"it. Logged metrics: {sorted(metrics)}. Set optimized_metric to one of them "
            "(val/bound is maximised by default) or to null."
        )
    return metrics[name]


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@accepts_resume  # vae-train resume=<run dir or checkpoint>: see run_dir.py
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@report_user_errors("vae-train")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> float | None:
    """Train; return the optimised metric for sweepers (Optuna maximises val/elbo)."""
    if not in_multirun():
        metrics = train(cfg)
        try:
            return optimized_value(cfg, metrics)
        except ValueError as err:  # a single run has already done its work: warn only
            log.warning(str(err))
            return None
    # A failing job of a sweep is logged, its traceback written to its folder, and NaN handed
    # to the sweeper (Optuna records a failed trial); the other jobs go on, and
    # sweeps.ReportFailedJobs lists the failures and sets the exit status at the end.
    with multirun_job():
        try:
            return optimized_value(cfg, train(cfg))
        except Exception:
            record_failure(cfg.paths.output_dir)
            return float("nan")


if __name__ == "__main__":
    main()
