"""TensorBoard's HParams tab: each run's flattened config against its final metrics.

``train()`` calls :func:`log_hparams` once, after fitting and testing. It writes the hparams
plugin data (the experiment with the metric names, the session's hyperparameters, its end)
with torch's ``hparams`` summary. The HParams tab takes each metric's value from the latest
point of the scalar series of the same tag in the same run, so the metrics are the final
``val/elbo``, ``val/kl``, ... exactly as logged. ``TensorBoardLogger.log_hyperparams(params,
metrics)`` is not used because it would also log the metric values again as scalars at the
current step: a second, later point on every validation curve. A run killed before the end
has its scalars but no HParams row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

# Hydra's instantiation keys say how to build an object, not what was trained; the class a
# `_target_` names is already in the table as the group's choice (model: mlp).
INSTANTIATE_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})


def hparams_from_config(cfg: DictConfig, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The config as flat ``{"model.latent_dim": 20, ...}`` pairs, plus Hydra's choices.

    Keys are dotted like Hydra overrides, so a row of the HParams table can be pasted back
    on the command line. Lists become strings. ``exclude`` holds dotted keys dropped with
    everything below them (paths, callbacks, ...). When Hydra is running, the chosen option
    of each config group is added under the group's name (``model: mlp``, ``data:
    fashion_mnist``), which is what a sweep over groups varies.
    """
    excluded = set(exclude)
    flat: dict[str, Any] = {}
    if HydraConfig.initialized():
        for group, option in HydraConfig.get().runtime.choices.items():
            if option is not None and not group.startswith("hydra/") and group not in excluded:
                flat[group] = option
    _flatten(cfg, "", excluded, flat)
    return flat


def _flatten(node: DictConfig, prefix: str, excluded: set[str], out: dict[str, Any]) -> None:
    for key in node:
        path = f"{prefix}{key}"
        if path in excluded or key in INSTANTIATE_KEYS or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _flatten(value, f"{path}.", excluded, out)
        elif isinstance(value, ListConfig):
            out[path] = str(OmegaConf.to_container(value, resolve=True))
        else:
            out[path] = value


def tensorboard_value(value: Any) -> int | float | str:
    """Numbers stay numbers (sortable, plottable); anything else shows as its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return str(value)


def log_hparams(
    trainer: L.Trainer,
    cfg: DictConfig,
    final_metrics: Mapping[str, float],
    metrics: Sequence[str],
    exclude: Sequence[str] = (),
) -> None:
    """Write the run's HParams entry to every TensorBoard logger (rank 0; no-op without one).

    ``metrics`` names the hparam metrics; those the run did not log (a callback switched
    off, ``test=false``) are left out.
    """
    if not trainer.is_global_zero:
        return
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers:
        return
    params = {k: tensorboard_value(v) for k, v in hparams_from_config(cfg, exclude).items()}
    names = {name: 0.0 for name in metrics if name in final_metrics}  # only names are used
    experiment, session_start, session_end = hparams(params, names)
    for logger in loggers:
        writer = logger.experiment._get_file_writer()  # reopens it if fit/test closed it
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary, trainer.global_step)
        logger.experiment.flush()
