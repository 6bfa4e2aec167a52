"""Entry point: ``vae-eval ckpt_path=<run dir>/checkpoints/<name>.ckpt [overrides]``.

Evaluates a checkpoint on the test (or validation) split: the ELBO terms, the
importance-weighted estimate of log p(x) with ``eval.iwae_k`` samples, bits per dimension and
active units (``eval.metrics=[nll]``, the default), and on request the representation metrics
of the posterior means (``mig``, ``dci``, ``sap``, ``factorvae`` against the data's ground-truth
factors; ``tc``, ``active_units``, ``kl_per_dim`` on any data; docs/metrics.md). Prints a table
and writes ``eval.json`` into its own run directory.

``evaluate_checkpoint`` does the work without Hydra (benchmarks and notebooks call it);
``evaluate(cfg)`` finds the data config of the checkpoint's run and applies the overrides.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
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
from torch import Tensor

from vae_lightning.checkpoints import load_checkpoint
from vae_lightning.config_checks import config_error
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.data.datamodule import prepare_images
from vae_lightning.errors import UserError, report_user_errors
from vae_lightning.lit_module import VAELitModule
from vae_lightning.metrics import CODE_METRICS, NEEDS_FACTORS, code_metrics
from vae_lightning.metrics.features import ClassifierSettings
from vae_lightning.metrics.sample_quality_eval import SAMPLE_QUALITY_METRICS, sample_quality
from vae_lightning.run_layout import RunLayout
from vae_lightning.seeding import EVAL_SEED
from vae_lightning.signatures import argument_problems
from vae_lightning.startup import freeze_imported_objects

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
    "mig": ("0..1", ".3f"),
    "dci_disentanglement": ("0..1", ".3f"),
    "dci_completeness": ("0..1", ".3f"),
    "dci_informativeness": ("0..1, test R^2", ".3f"),
    "sap": ("0..1", ".3f"),
    "factorvae_score": ("0..1, vote accuracy", ".3f"),
    "tc": ("nats (Gaussian fit)", ".4f"),
    "fid": ("on eval.features", ".3f"),
    "kid": ("on eval.features", ".5f"),
    "kid_std": ("over KID subsets", ".5f"),
    "precision": ("fraction", ".3f"),
    "recall": ("fraction", ".3f"),
}
# eval.metrics: nll runs the test loop (ELBO terms, IWAE NLL, bits/dim, active units); the
# code metrics are figures of the posterior means of the split's images (vae_lightning.metrics);
# fid, kid and precision_recall compare samples with the split (metrics/sample_quality.py).
MetricName = Literal[
    "nll",
    "mig",
    "dci",
    "sap",
    "factorvae",
    "tc",
    "active_units",
    "kl_per_dim",
    "fid",
    "kid",
    "precision_recall",
]
# How many images an encoding pass takes at once (memory only: the codes do not depend on it).
ENCODE_CHUNK = 1000
# eval.* keys passed to metrics.sample_quality_eval.sample_quality (docs/sample-quality.md).
SAMPLE_QUALITY_KEYS = (
    "num_samples",
    "features",
    "nearest_k",
    "kid_subsets",
    "kid_subset_size",
    "classifier",
    "feature_cache_dir",
)


# For a conditional model (model=cvae) the same metrics are of log p(x|y): what each row then is.
CONDITIONAL_TITLES = {
    "elbo": "ELBO of log p(x|y)",
    "rec": "-E_q log p(x|z,y)",
    "kl": "KL(q(z|x,y) || p(z))",
    "nll_iwae": "-log p(x|y)",
    "bits_per_dim": "-log2 p(x|y) per pixel",
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
    metrics: Sequence[MetricName] = ("nll",),
) -> dict[str, Any]:
    """Metrics of a checkpoint on one split, named ``<split>/<metric>``, plus how they were got.

    ``nll`` runs the module's own test step (the code that logs ``test/*`` after training),
    with ``iwae_k`` importance samples and ``chunk_rows`` decoder rows per pass. The other
    ``metrics`` are computed from the posterior means of the split's images (the same images;
    ``limit_batches`` applies to both); those that need ground-truth factors take them from
    the data module's ``factors(split)``, and data without them is refused before anything
    is computed.
    """
    factors = split_factors(datamodule, split, metrics)
    model = VAELitModule.load_from_checkpoint(
        ckpt_path, map_location="cpu", test_iwae_k=iwae_k, iwae_chunk_rows=chunk_rows
    )
    if "kl_per_dim" in metrics:
        check_closed_form_kl(model)
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
    values: dict[str, float] = {}
    if "nll" in metrics:
        try:
            trainer.test(model, datamodule=datamodule, verbose=False)
        finally:
            if split == "val":
                del datamodule.test_dataloader  # the class's own method again
        values.update(
            {
                f"{split}/{name.removeprefix('test/')}": float(value)
                for name, value in trainer.callback_metrics.items()
            }
        )
        images = len(datamodule.splits[split][0])
        num_images = min(images, trainer.num_test_batches[0] * datamodule.eval_batch_size)
    else:
        datamodule.setup("test")
        images = len(datamodule.splits[split][0])
        num_images = limited_count(images, limit_batches, datamodule.eval_batch_size)
    if set(metrics) - {"nll"}:
        values.update(
            representation_metrics(
                model,
                datamodule,
                split,
                metrics,
                factors,
                num_images,
                trainer.strategy.root_device,
            )
        )
    seconds = time.perf_counter() - start
    memory, memory_kind = peak_memory_mb(trainer.strategy.root_device)

    return {
        **dict(sorted(values.items())),
        "metrics": list(metrics),
        "iwae_k": iwae_k,
        "split": split,
        "num_images": num_images,
        "ckpt_path": str(Path(ckpt_path).resolve()),
        "likelihood": model.likelihood.__class__.__name__,
        "objective": model.objective.__class__.__name__,
        "prior": model.net.prior.__class__.__name__,
        "posterior": model.net.posterior.__class__.__name__,
        "kl_estimator": model.kl_estimator,
        # "label": a conditional model's bounds and estimates are of log p(x|y), not log p(x).
        "conditional_on": "label" if model.net.conditional else None,
        "seed": EVAL_SEED,
        "chunk_rows": chunk_rows,
        "device": str(trainer.strategy.root_device),
        "peak_memory_mb": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "seconds": round(seconds, 2),
    }


def split_factors(
    datamodule: L.LightningDataModule, split: Split, metrics: Sequence[str]
) -> Tensor | None:
    """The split's ground-truth factor classes (N, K) when a metric needs them, else None;
    an EvaluationError when the data has none."""
    wanted = [name for name in metrics if name in NEEDS_FACTORS]
    if not wanted:
        return None
    factors_of = getattr(datamodule, "factors", None)
    factors = factors_of(split) if callable(factors_of) else None
    if factors is None:
        dataset = getattr(datamodule, "dataset", type(datamodule).__name__)
        raise EvaluationError(
            f"eval.metrics asks for {', '.join(wanted)}, which compare the codes with the "
            f"ground-truth factors of the images, but the data ({dataset}) has none: its data "
            "module gives no factors(split). Evaluate these metrics on data with factors "
            "(data=dsprites), or keep to those any data has: nll, tc, active_units, kl_per_dim."
        )
    return factors


def check_closed_form_kl(model: VAELitModule) -> None:
    """kl_per_dim reports the closed-form KL of each dimension; refuse priors without one."""
    if model.kl_estimator != "closed_form":
        raise EvaluationError(
            f"eval.metrics=kl_per_dim needs the KL of each latent dimension in closed form, "
            f"which this model's prior ({type(model.net.prior).__name__}) does not have (its "
            "objectives estimate the KL by Monte Carlo). Drop kl_per_dim from eval.metrics."
        )


def limited_count(images: int, limit_batches: int | float | None, batch_size: int) -> int:
    """How many of the split's images ``eval.limit_batches`` keeps (as Lightning's limit)."""
    if limit_batches is None:
        return images
    if isinstance(limit_batches, float):
        return min(images, int(images * limit_batches))
    return min(images, limit_batches * batch_size)


@torch.no_grad()
def posterior_codes(
    model: VAELitModule, images: Tensor, labels: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Posterior means and log-variances (float32, CPU) of ``net.encode_code`` for the
    evaluation images (already binarised with their fixed seed, as the test loop sees them)."""
    model.to(device).eval()
    mus, logvars = [], []
    for start in range(0, len(images), ENCODE_CHUNK):
        batch = prepare_images(images[start : start + ENCODE_CHUNK].to(device), fresh_draw=False)
        batch_labels = labels[start : start + ENCODE_CHUNK].to(device)
        mu, logvar = model.net.encode_code(
            batch.to(model.net.dtype), batch_labels if model.net.conditional else None
        )
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


def representation_metrics(
    model: VAELitModule,
    datamodule: L.LightningDataModule,
    split: Split,
    metrics: Sequence[str],
    factors: Tensor | None,
    num_images: int,
    device: torch.device,
) -> dict[str, float]:
    """The figures of the posterior means of the first ``num_images`` images of ``split``."""
    images, labels = datamodule.splits[split]
    mu, logvar = posterior_codes(model, images[:num_images], labels[:num_images], device)
    names = [name for name in metrics if name in CODE_METRICS]
    if factors is not None:
        factors = factors[:num_images].cpu()
    values = {
        f"{split}/{key}": value
        for key, value in code_metrics(names, mu, factors, seed=EVAL_SEED).items()
    }
    if "kl_per_dim" in metrics:
        kl = model.net.kl_per_dim(mu.to(model.net.dtype), logvar.to(model.net.dtype))
        width = len(str(kl.shape[1] - 1))
        for dim, value in enumerate(kl.double().mean(dim=0).tolist()):
            values[f"{split}/kl_per_dim/{dim:0{width}d}"] = value
    return values


def check_eval_settings(settings: dict[str, Any], data_target: Callable[..., Any]) -> None:
    """Raise one ConfigError listing every bad ``eval.*`` value, judged by the signatures of
    the code they go to: ``evaluate_checkpoint`` and the data module (``eval.batch_size``)."""
    own = ("batch_size", *SAMPLE_QUALITY_KEYS)
    checked = {name: value for name, value in settings.items() if name not in own}
    problems = argument_problems(evaluate_checkpoint, checked)
    problems += argument_problems(
        sample_quality, {key: settings[key] for key in SAMPLE_QUALITY_KEYS if key in settings}
    )
    problems += [
        replace(problem, parameter=f"classifier.{problem.parameter}")
        for problem in argument_problems(ClassifierSettings, settings.get("classifier") or {})
    ]
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
    conditional = results.get("conditional_on") == "label"
    title = f"{Path(results['ckpt_path']).name} on {split} ({results.get('num_images', '-')})"
    if conditional:
        title += ", conditional on the label"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for name, (unit, fmt) in TABLE_ROWS.items():
        key = f"{split}/{name}"
        if key in results:
            label = f"{key} (k={results['iwae_k']})" if name == "nll_iwae" else key
            if conditional and name in CONDITIONAL_TITLES:
                label = f"{label}: {CONDITIONAL_TITLES[name]}"
            table.add_row(label, format(results[key], fmt), unit)
    for key in sorted(k for k in results if k.startswith(f"{split}/kl_per_dim/")):
        table.add_row(key, format(results[key], ".3f"), "nats/image")
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
        metrics=tuple(cfg.eval.metrics),
    )
    if quality := [name for name in cfg.eval.metrics if name in SAMPLE_QUALITY_METRICS]:
        model = VAELitModule.load_from_checkpoint(ckpt_path, map_location="cpu")
        results.update(
            sample_quality(
                model,
                datamodule,
                quality,
                split=cfg.eval.split,
                batch_size=cfg.eval.batch_size,
                accelerator=cfg.eval.accelerator,
                **{key: settings[key] for key in SAMPLE_QUALITY_KEYS if key in settings},
            )
        )
    results["data"] = {key: data[key] for key in RECORDED_DATA_KEYS if key in data}
    results["data"]["files"] = {split: str(path) for split, path in datamodule.sources.items()}
    out = RunLayout(cfg.paths.output_dir).eval_results
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    if "peak_memory_mb" in results:  # the nll test loop ran
        print(
            f"Peak memory {results['peak_memory_mb']:.0f} MiB ({results['peak_memory_kind']}), "
            f"{results['seconds']:.1f} s on {results['device']}."
        )
    extractor = results.get("sample_quality", {}).get("feature_extractor", {})
    if "test_accuracy" in extractor:
        print(
            f"Sample quality on the domain classifier's features (test accuracy "
            f"{extractor['test_accuracy']:.4f}; {extractor['path']})."
        )
    print(f"Results: {out}")
    return results


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@report_user_errors("vae-eval")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
