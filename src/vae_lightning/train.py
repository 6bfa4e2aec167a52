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
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from vae_lightning.hparams import log_hparams
from vae_lightning.report import write_report_after_training
from vae_lightning.sweeps import in_multirun, multirun_job, record_failure

log = logging.getLogger(__name__)

# The repository's conf/, next to src/ (the package is installed editable with `pip install -e`).
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``{name: {_target_: ...}}`` entry of a callbacks/logger group."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured VAE, then test its best checkpoint; return the final metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model, optimizer=cfg.optimizer)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_named(cfg.get("callbacks")),
        logger=instantiate_named(cfg.get("logger")) or False,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}

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


def report(cfg: DictConfig, metrics: dict[str, float], best_checkpoint: str) -> None:
    """Where the run went and how it did, printed once (rank 0)."""
    lines = [
        f"Run dir:          {cfg.paths.output_dir}",
        f"Best checkpoint:  {best_checkpoint or '(none saved)'}",
    ]
    for name in ("val/elbo", "test/elbo"):
        if name in metrics:
            lines.append(f"Final {name + ':':<11} {metrics[name]:.2f} nats per image")
    # In a sweep, the sweep folder: TensorBoard then lists its jobs side by side.
    logdir = HydraConfig.get().sweep.dir if in_multirun() else cfg.paths.log_dir
    lines.append(f"TensorBoard:      tensorboard --logdir {logdir}")
    rank_zero_info("\n".join(lines))


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric named by ``cfg.optimized_metric`` (what a sweeper ranks jobs by)."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name not in metrics:
        raise ValueError(
            f"optimized_metric={name!r} was not logged by this run, so a sweeper cannot rank "
            f"it. Logged metrics: {sorted(metrics)}. Set optimized_metric to one of them "
            "(val/elbo is maximised by default) or to null."
        )
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
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
