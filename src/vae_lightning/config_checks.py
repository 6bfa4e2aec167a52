"""Checks on a composed config, run before any data is read or any output is written.

Hydra already rejects misspelt keys and unknown group options. What it cannot see is a value
of the wrong type or out of range (``model.latent_dim=abc``, ``optimizer.lr=0``), a device
count the machine does not have, or a model that cannot take the data's image shape. Each of
those would otherwise surface minutes later as a torch traceback.

Only the keys listed in ``RULES`` are checked, and only when present: keys added by other
config groups pass through untouched, so the table never blocks a new feature.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning.models.vae import ACTIVATIONS, WEIGHT_INITS
from vae_lightning.seeding import forked_rng


class ConfigError(ValueError):
    """The composed config holds a value that cannot work; the message says which and why."""


@dataclass(frozen=True)
class Number:
    """An integer or real number in a range; ``None`` allowed when ``optional``."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value instead of low <= value
    high_open: bool = False
    optional: bool = False

    def expects(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = f"{kind} {' and '.join(bounds)}".strip()
        return f"{text}, or null" if self.optional else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        numeric = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def expects(self) -> str:
        return "one of " + ", ".join(self.choices)

    def accepts(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Boolean:
    def expects(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class PositiveInts:
    """A list of integers >= 1, of a fixed length when ``length`` is given."""

    length: int | None = None
    min_length: int = 0

    def expects(self) -> str:
        size = f"{self.length} " if self.length else ""
        return f"a list of {size}integers >= 1"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list | tuple):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_length:
            return False
        return all(Number(integer=True, low=1).accepts(item) for item in value)


@dataclass(frozen=True)
class Rule:
    key: str
    check: Number | OneOf | Boolean | PositiveInts
    meaning: str


POSITIVE_INT = Number(integer=True, low=1)
RULES: tuple[Rule, ...] = (
    Rule("seed", Number(integer=True, low=0, high=2**32 - 1, optional=True), "the global seed"),
    Rule("nan_policy", OneOf(("stop", "skip")), "what a non-finite training loss does"),
    Rule(
        "callbacks.nan_guard.max_consecutive_skips",
        Number(integer=True, low=0),
        "bad batches skipped in a row before stopping",
    ),
    Rule("model.latent_dim", POSITIVE_INT, "the size of z"),
    Rule("model.beta", Number(low=0), "the weight of the KL term"),
    Rule("model.net.hidden_dims", PositiveInts(), "the hidden layer widths"),
    Rule("model.net.hidden_dim", POSITIVE_INT, "the hidden layer width"),
    Rule("model.net.channels", PositiveInts(min_length=1), "the conv channels"),
    Rule("model.net.activation", OneOf(tuple(ACTIVATIONS)), "the hidden activation"),
    Rule("model.net.init", OneOf(tuple(WEIGHT_INITS)), "the weight initialisation"),
    Rule("optimizer.lr", Number(low=0, low_open=True), "the learning rate"),
    Rule("optimizer.weight_decay", Number(low=0), "the weight decay"),
    Rule("optimizer.momentum", Number(low=0, high=1, high_open=True), "the momentum"),
    Rule("data.dataset", OneOf(("mnist", "fashion_mnist")), "the dataset"),
    Rule("data.image_shape", PositiveInts(length=3), "(channels, height, width)"),
    Rule("data.batch_size", POSITIVE_INT, "images per training batch and device"),
    Rule("data.eval_batch_size", POSITIVE_INT, "images per evaluation batch"),
    Rule("data.val_size", POSITIVE_INT, "validation images carved from the train split"),
    Rule("data.binarize", OneOf(("dynamic", "static", "none")), "the binarization"),
    Rule("data.loader", OneOf(("tensor", "torch")), "the loader"),
    Rule("data.num_workers", Number(integer=True, low=0), "DataLoader workers"),
    Rule("data.split_seed", Number(integer=True, low=0), "the validation split seed"),
    Rule("data.download", Boolean(), "downloading missing files"),
    Rule("data.verify_checksums", Boolean(), "checking MD5s"),
    Rule("test_iwae_k", Number(integer=True, low=0), "importance samples per test image"),
    Rule("likelihood.variance", OneOf(("fixed", "learned")), "the Gaussian variance"),
    Rule("likelihood.std", Number(low=0, low_open=True), "the Gaussian standard deviation"),
    Rule("likelihood.min_std", Number(low=0, low_open=True), "the Gaussian std floor"),
    Rule("objective.k", POSITIVE_INT, "importance samples per image of the IWAE bound"),
    Rule("objective.kl_warmup_steps", Number(integer=True, low=0), "the KL warm-up length"),
    Rule("objective.cycle_steps", Number(integer=True, low=0), "the KL annealing cycle"),
    Rule("objective.free_bits", Number(low=0), "nats per latent dimension not penalised"),
    Rule("trainer.max_epochs", Number(integer=True, low=-1), "epochs to train (-1: no limit)"),
    Rule("trainer.gradient_clip_val", Number(low=0, optional=True), "the gradient norm clip"),
    Rule("trainer.log_every_n_steps", POSITIVE_INT, "the logging interval"),
    Rule(
        "trainer.check_val_every_n_epoch",
        Number(integer=True, low=1, optional=True),
        "the validation interval",
    ),
)
_ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem found, or return if there is none.

    Value checks first; the device check relies on valid values. The model is checked
    against the data shape when it is built (``build_checked_model``).
    """
    problems = [problem for rule in RULES if (problem := _check_rule(cfg, rule))]
    if not problems:
        problems += _check_devices(cfg) + _check_self_checking_groups(cfg)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(
            f"Invalid configuration; nothing was run and no file was written:\n{listed}\n"
            "Fix the override(s) on the command line (or the config file that sets them); "
            "`vae-train --cfg job` prints the composed config."
        )


# Groups the model builds from plain data. Building them here runs their own checks, those
# that relate several keys (objective.cycle_steps needs objective.kl_warmup_steps), so a
# mistake there is reported as what it is rather than as a model that cannot be built.
SELF_CHECKING_GROUPS = ("likelihood", "objective")


def _check_self_checking_groups(cfg: DictConfig) -> list[str]:
    problems = []
    for group in SELF_CHECKING_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            instantiate(node)
        except Exception as err:  # the group's own message says what to set
            problems.append(f"{group}: {root_cause(err)}")
    return problems


def root_cause(err: BaseException) -> BaseException:
    """The error under Hydra's InstantiationException (and any other wrapping)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _check_rule(cfg: DictConfig, rule: Rule) -> str | None:
    value = _select(cfg, rule.key)
    if value is _ABSENT or rule.check.accepts(value):
        return None
    return f"{rule.key}={value!r} is invalid: {rule.meaning} must be {rule.check.expects()}."


def _choice(group: str, fallback: str) -> str:
    """``model=conv`` as the user picked it, when Hydra knows; else a description."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return fallback


def available_devices(accelerator: str) -> tuple[str, int] | None:
    """What ``accelerator`` resolves to here and how many such devices there are.

    ``auto`` resolves as Lightning does (CUDA, else MPS, else CPU). On CPU a "device" is a
    process, so the limit is the number of cores this process may use. None when unknown
    (TPU and other accelerators: Lightning checks those itself).
    """
    if accelerator == "auto":
        if torch.cuda.is_available():
            accelerator = "cuda"
        elif torch.backends.mps.is_available():
            accelerator = "mps"
        else:
            accelerator = "cpu"
    if accelerator in ("gpu", "cuda"):
        return "CUDA GPU", torch.cuda.device_count()
    if accelerator == "mps":
        return "MPS device", int(torch.backends.mps.is_available())
    if accelerator == "cpu":
        cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
        return "CPU core", cores or 1
    return None


def requested_devices(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` asks for; None for 'auto' and -1 (all)."""
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([part for part in devices.split(",") if part.strip()])
        if not devices.lstrip("-").isdigit():
            return None
        devices = int(devices)
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices != -1:
        return devices
    return None


def _check_devices(cfg: DictConfig) -> list[str]:
    devices = _select(cfg, "trainer.devices")
    if devices is _ABSENT:
        return []
    count = requested_devices(devices)
    if count is not None and count < 1:
        return [
            f"trainer.devices={devices!r} is invalid: use a count >= 1, a list of ids, or auto."
        ]
    accelerator = str(_select(cfg, "trainer.accelerator") or "auto")
    found = available_devices(accelerator)
    if count is None or found is None:
        return []
    kind, available = found
    # An explicit accelerator=cpu may run more processes than cores (DDP debugging on a
    # laptop); `auto` asking for more CPU processes than cores almost surely meant GPUs.
    if kind == "CPU core" and accelerator == "cpu" or count <= available:
        return []
    picked = f"trainer.accelerator={accelerator}" + (
        f" picks the {kind}s" if accelerator == "auto" else ""
    )
    return [
        f"trainer.devices={devices!r} asks for {count} devices, but this machine has "
        f"{available} {kind}{'' if available == 1 else 's'} ({picked}). Use "
        f"trainer.devices={max(available, 1)} or fewer"
        + (
            ", or trainer=cpu to run that many CPU processes anyway."
            if kind == "CPU core"
            else "."
        )
    ]


def build_checked_model(
    cfg: DictConfig, build: Callable[[], L.LightningModule]
) -> L.LightningModule:
    """``build()`` the model, then run a batch of zeros of ``data.image_shape`` through it.

    A model that cannot be built for, or cannot take, the configured image shape (``model=conv``
    on 32x32 images) raises a ConfigError naming the model and the shape. The test forward pass
    draws z from a forked RNG, so the seeded training stream is the same with or without it.
    """
    shape = _select(cfg, "data.image_shape")
    shape_text = f"data.image_shape={shape}" if shape is not _ABSENT else "the data"
    model_name = _choice("model", f"model._target_={cfg.model.get('_target_')}")

    def fail(problem: str) -> ConfigError:
        return ConfigError(
            f"Invalid configuration; nothing was run and no file was written:\n  - {model_name} "
            f"{problem}\nPick a model that fits the data (model=mlp takes any image shape)."
        )

    try:
        model = build()
        if shape is _ABSENT:
            return model
        x = torch.zeros(2, *shape)
        with forked_rng(), torch.no_grad():
            model.eval()
            out = model(x)
            model.train()
    except Exception as err:  # any failure to build or run is a config problem here
        raise fail(f"cannot be built for {shape_text}: {root_cause(err)}") from err
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) != tuple(x.shape):
        raise fail(
            f"turns images of {shape_text} into outputs of shape {tuple(logits.shape[1:])}; "
            "the decoder must give one value per pixel."
        )
    return model
