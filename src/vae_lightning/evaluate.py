"""Entry point: ``vae-eval ckpt_path=<run dir>/checkpoints/<name>.ckpt [overrides]``.

Evaluates a checkpoint on the test (or validation) split: the ELBO terms, the
importance-weighted estimate of log p(x) with ``eval.iwae_k`` samples, bits per dimension and
active units. Prints a table and writes ``eval.json`` into its own run directory.

``evaluate_checkpoint`` does the work without Hydra (benchmarks and notebooks call it);
``evaluate(cfg)`` finds the data config of the checkpoint's run and applies the overrides.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf
from pydantic import NonNegativeInt, PositiveInt
from rich.console import Console
from rich.table import Table

from vae_lightning.checkpoints import load_checkpoint
from vae_lightning.config_checks import config_error
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.errors import UserError, report_user_errors
from vae_lightning.lit_module import VAELitModule
from vae_lightning.run_layout import RunLayout
from vae_lightning.seeding import EVAL_SEED
from vae_lightning.signatures import argument_problems

# test: the official test split; val: the validation images held out of the training split.
Split = Literal["test", "val"]
# Metric name (after the split prefix) -> (unit, format) in the printed table.
TABLE_ROWS = {
    "elbo": ("nats/image", ".2f"),
    "rec": ("nats/image", ".2f"),
    "kl": ("nats/image", ".2f"),
    "loss": ("nats/image", ".2f"),
    "nll_iwae": ("nats/image", ".2f"),
    "bits_per_dim": ("bits/pixel", ".4f"),
    "active_units": ("of the latent dims", ".0f"),
}


class EvaluationError(UserError, ValueError):
    """A bad vae-eval invocation; the message says what to do."""


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this evaluation: CUDA allocations, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, "process_peak_rss"


def evaluate_checkpoint(
    ckpt_path: str | Path,
    datamodule: L.LightningDataModule,
    split: Split = "test",
    iwae_k: NonNegativeInt = 5000,
    chunk_rows: PositiveInt = 16384,
    accelerator: str = "auto",
    limit_batches: int | float | None = None,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Metrics of a checkpoint on one split, named ``<split>/<metric>``, plus how they were got.

    Runs the module's own test step (the code that logs ``test/*`` after training), with
    ``iwae_k`` importance samples and ``chunk_rows`` decoder rows per pass.
    """
    model = VAELitModule.load_from_checkpoint(
        ckpt_path, map_location="cpu", test_iwae_k=iwae_k, iwae_chunk_rows=chunk_rows
    )
    if split == "val":
        # The test loop computes everything (IWAE, active units); point it at the val split.
        datamodule.test_dataloader = datamodule.val_dataloader
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[RichProgressBar()] if progress_bar else None,
        enable_progress_bar=progress_bar,
        limit_test_batches=limit_batches if limit_batches is not None else 1.0,
    )
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
    start = time.perf_counter()
    try:
        trainer.test(model, datamodule=datamodule, verbose=False)
    finally:
        if split == "val":
            del datamodule.test_dataloader  # the class's own method again
    seconds = time.perf_counter() - start
    memory, memory_kind = peak_memory_mb(trainer.strategy.root_device)

    metrics = {
        f"{split}/{name.removeprefix('test/')}": float(value)
        for name, value in trainer.callback_metrics.items()
    }
    images = len(datamodule.splits[split][0])
    batches = trainer.num_test_batches[0]
    return {
        **dict(sorted(metrics.items())),
        "iwae_k": iwae_k,
        "split": split,
        "num_images": min(images, batches * datamodule.eval_batch_size),
        "ckpt_path": str(Path(ckpt_path).resolve()),
        "likelihood": model.likelihood.__class__.__name__,
        "objective": model.objective.__class__.__name__,
        "prior": model.net.prior.__class__.__name__,
        "posterior": model.net.posterior.__class__.__name__,
        "kl_estimator": model.kl_estimator,
        "seed": EVAL_SEED,
        "chunk_rows": chunk_rows,
        "device": str(trainer.strategy.root_device),
        "peak_memory_mb": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "seconds": round(seconds, 2),
    }


def check_eval_settings(settings: dict[str, Any], data_target: Callable[..., Any]) -> None:
    """Raise one ConfigError listing every bad ``eval.*`` value, judged by the signatures of
    the code they go to: ``evaluate_checkpoint`` and the data module (``eval.batch_size``)."""
    checked = {name: value for name, value in settings.items() if name != "batch_size"}
    problems = argument_problems(evaluate_checkpoint, checked)
    if "batch_size" in settings:
        problems += [
            replace(problem, parameter="batch_size")
            for problem in argument_problems(
                data_target, {"eval_batch_size": settings["batch_size"]}
            )
        ]
    if problems:
        raise config_error(
            [f"eval.{p.parameter}={p.value!r} is invalid: {p.reason}." for p in problems],
            "Fix the eval.* override(s); `vae-eval --cfg job` prints the composed config.",
        )


def overridden_data_keys(overrides: list[str]) -> tuple[bool, list[str]]:
    """Whether the data group was swapped (``data=...``), and the ``data.*`` keys set."""
    keys = [item.split("=", 1)[0].lstrip("+~") for item in overrides]
    return "data" in keys, [key for key in keys if key.startswith("data.")]


def data_config(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The run's data config with the command line's data overrides applied, resolved."""
    ckpt_path = Path(cfg.ckpt_path)
    swapped, keys = overridden_data_keys(overrides)
    if swapped:  # data=<option>: the composed option, with any data.* overrides already in it
        return OmegaConf.to_container(cfg.data, resolve=True)
    path = RunLayout.of_checkpoint(ckpt_path).config_file
    if not path.is_file():
        raise EvaluationError(
            f"the data config of the checkpoint's run is read from {path}, which does not "
            f"exist: {ckpt_path} is not in the checkpoints/ folder of a vae-train run "
            "directory. Keep the checkpoint in its run directory, or say which data to "
            "evaluate on with data=<option> (e.g. data=fashion_mnist data.root=/path)."
        )
    run_cfg = OmegaConf.load(path)
    # Resolve in the run's own context: its paths and seed fill the interpolations.
    data = OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True))
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(data, key.removeprefix("data."), value, force_add=True)
    return OmegaConf.to_container(data, resolve=True)


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    split = results["split"]
    table = Table(title=f"{Path(results['ckpt_path']).name} on {split} ({results['num_images']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for name, (unit, fmt) in TABLE_ROWS.items():
        key = f"{split}/{name}"
        if key in results:
            label = f"{key} (k={results['iwae_k']})" if name == "nll_iwae" else key
            table.add_row(label, format(results[key], fmt), unit)
    (console or Console()).print(table)


# The data options eval.json records: what picks the images, for each kind of data module.
RECORDED_DATA_KEYS = (
    "dataset",
    "root",
    "binarize",
    "split_seed",
    "val_size",
    "split",
    "val_fraction",
    "test_fraction",
    "image_size",
    "channels",
    "crop",
)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` as configured; write and return the results."""
    if not cfg.get("ckpt_path"):
        raise EvaluationError(
            "vae-eval needs the checkpoint to evaluate: vae-eval ckpt_path=<run dir>/"
            "checkpoints/<name>.ckpt (vae-train prints the best one at the end of training)."
        )
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise EvaluationError(f"ckpt_path={ckpt_path}: no such file.")
    load_checkpoint(ckpt_path)  # truncated, corrupt or not a checkpoint: a clear CheckpointError
    data = data_config(cfg, list(HydraConfig.get().overrides.task))
    settings = OmegaConf.to_container(cfg.eval, resolve=True)
    check_eval_settings(settings, get_object(data["_target_"]))
    data["eval_batch_size"] = cfg.eval.batch_size
    datamodule = instantiate(data)
    results = evaluate_checkpoint(
        ckpt_path,
        datamodule,
        split=cfg.eval.split,
        iwae_k=cfg.eval.iwae_k,
        chunk_rows=cfg.eval.chunk_rows,
        accelerator=cfg.eval.accelerator,
        limit_batches=cfg.eval.limit_batches,
        progress_bar=cfg.eval.progress_bar,
    )
    results["data"] = {key: data[key] for key in RECORDED_DATA_KEYS if key in data}
    results["data"]["files"] = {split: str(path) for split, path in datamodule.sources.items()}
    out = RunLayout(cfg.paths.output_dir).eval_results
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(
        f"Peak memory {results['peak_memory_mb']:.0f} MiB ({results['peak_memory_kind']}), "
        f"{results['seconds']:.1f} s on {results['device']}. Results: {out}"
    )
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@report_user_errors("vae-eval")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
