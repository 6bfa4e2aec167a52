"""The rules no single component can check: those that cross config groups, those that need
the machine, and the few limits we put on third-party classes beyond their own checks.

Each component checks its own parameters (its typed signature, then its constructor; see
config_checks.py). What is here relates two groups (the likelihood and the data's
binarization, the model and the data's image shape, a conditional model and the data's
labels or the prior) or a group and the machine
(``trainer.devices``).
"""

from __future__ import annotations

import os
import typing
from typing import Annotated, Any

import lightning as L
import torch
from omegaconf import OmegaConf
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from vae_lightning.models.conditional import reads_encoder
from vae_lightning.seeding import forked_rng

# ------------------------------------------------------------------ third-party classes
# Declared as typed signatures, so the same checker reads them as it reads our components'.


def optimizer_limits(
    lr: PositiveFloat = 1e-3,
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    weight_decay: NonNegativeFloat = 0.0,
    **others: Any,
) -> None:
    """What any torch.optim optimizer needs beyond its own checks: torch accepts lr=0 (which
    never moves) and momentum >= 1 (which diverges)."""


def trainer_limits(
    max_epochs: Annotated[int, Field(ge=-1)] | None = None,
    gradient_clip_val: NonNegativeFloat | None = None,
    log_every_n_steps: PositiveInt = 50,
    check_val_every_n_epoch: PositiveInt | None = 1,
    **others: Any,
) -> None:
    """Trainer keys Lightning checks only once it runs, minutes in (or not at all)."""


THIRD_PARTY_LIMITS: dict[type, Any] = {
    torch.optim.Optimizer: optimizer_limits,
    L.Trainer: trainer_limits,
}


def limits_of(cls: type) -> Any | None:
    """The limits declared above for ``cls`` (or a base class of it), if any."""
    matching = (limits for base, limits in THIRD_PARTY_LIMITS.items() if issubclass(cls, base))
    return next(matching, None)


# ------------------------------------------------------------------ likelihood <-> data


def likelihood_data_mismatch(likelihood: type, binarize: str) -> str | None:
    """A warning when the likelihood is not a density of the data the binarization gives.

    Decided by the likelihood class's ``expects_binary``; a class without it gets no warning.
    A warning, not an error: such a run trains, its bounds just bound no density.
    """
    expects_binary = getattr(likelihood, "expects_binary", None)
    binarized = binarize != "none"
    name = likelihood.__name__
    if expects_binary is True and not binarized:
        return (
            f"likelihood {name} on grey levels (data.binarize=none): BCE on intensities is "
            "not a normalised likelihood, so val/elbo and test/nll_iwae bound no density. Use "
            "data.binarize=dynamic, or likelihood=continuous_bernoulli for grey levels."
        )
    if expects_binary is False and binarized:
        return (
            f"likelihood {name} is a density for grey levels but data.binarize={binarize}: "
            "on 0/1 pixels it is unbounded. Use data.binarize=none."
        )
    return None


# ------------------------------------------------------------------ model <-> data


def zero_labels(model: torch.nn.Module) -> torch.Tensor | None:
    """Labels (class 0) for the test batch of two images if the model's network is
    conditional; None for the others (a user's own module may take images alone)."""
    conditional = getattr(getattr(model, "net", None), "conditional", False)
    return torch.zeros(2, dtype=torch.long) if conditional else None


def builds_conditional(target: Any) -> bool:
    """Whether a network target (a VAE class or a factory declaring the class it returns)
    builds a conditional network, one whose encoder and decoder take the class labels."""
    cls = target
    if not isinstance(target, type):
        try:
            cls = typing.get_type_hints(target).get("return")
        except Exception:  # unresolvable annotations: nothing declared
            return False
    return isinstance(cls, type) and bool(getattr(cls, "conditional", False))


def conditional_problems(
    model_name: str,
    num_classes: Any,
    model_classes: Any,
    data_name: str,
    prior: type | None,
    prior_name: str,
) -> dict[str, str]:
    """What a conditional model (model=cvae) needs of the other groups: labelled data, and a
    prior that does not read the encoder (a VampPrior's pseudo-inputs have no labels). By the
    config key each problem is about."""
    problems = {}
    # About the model's own key: what its signature check would otherwise report, less clearly.
    if not num_classes:
        problems["model.net.num_classes"] = (
            f"{model_name} conditions on the class labels, but {data_name} has none "
            f"(data.num_classes={num_classes}; an image folder without class sub-folders, "
            "say). Train it on labelled data (data=mnist, data=fashion_mnist), or pick an "
            "unconditional model (model=mlp, model=conv)."
        )
    elif model_classes != num_classes:
        problems["model.net.num_classes"] = (
            f"model.net.num_classes={model_classes} but the data's labels take "
            f"data.num_classes={num_classes} values; leave model.net.num_classes to its "
            "default, which follows the data."
        )
    if prior is not None and reads_encoder(prior):
        problems["prior"] = (
            f"{model_name} and {prior_name} do not combine: that prior is defined by the "
            "encoder on learned pseudo-inputs, which have no label for a conditional encoder "
            "to see. Use prior=standard (or another prior that does not read the encoder)."
        )
    return problems


def model_output_problem(model: torch.nn.Module, image_shape: list[int]) -> str | None:
    """Run a batch of zeros of ``image_shape`` through ``model``; a problem if its decoder
    does not give the likelihood's values per pixel (``likelihood.decoder_channels``, one per
    channel by default). Exceptions propagate: the caller reports them with both shapes."""
    x = torch.zeros(2, *image_shape)
    labels = zero_labels(model)
    with forked_rng(), torch.no_grad():
        model.eval()
        out = model(x) if labels is None else model(x, labels)
        model.train()
    logits = getattr(out, "logits", None)
    likelihood = getattr(model, "likelihood", None)
    channels = (
        image_shape[0] if likelihood is None else likelihood.decoder_channels(image_shape[0])
    )
    expected = (2, channels, *image_shape[1:])
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) != expected:
        return (
            f"turns images of data.image_shape={list(image_shape)} into outputs of shape "
            f"{tuple(logits.shape[1:])}; the likelihood needs {expected[1:]} ({channels} "
            "values per pixel)."
        )
    return None


# ------------------------------------------------------------------ objective <-> model


def objective_problem(model: torch.nn.Module, image_shape: list[int]) -> str | None:
    """Evaluate the model's objective once on a batch of zeros; the objective's own message
    when it cannot be computed for this model (free bits without a closed-form KL, ...)."""
    if not hasattr(model, "objective"):  # a user's own LightningModule
        return None
    x = torch.zeros(2, *image_shape)
    labels = zero_labels(model)
    with forked_rng(), torch.no_grad():
        try:
            model.objective(model.net, model.likelihood, x, 1.0, labels=labels)
        except ValueError as err:
            return str(err)
    return None


# ------------------------------------------------------------------ trainer <-> machine


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


def device_problems(devices: Any, accelerator: str) -> list[str]:
    """``trainer.devices`` against what this machine has for ``trainer.accelerator``."""
    count = requested_devices(devices)
    if count is not None and count < 1:
        return [
            f"trainer.devices={devices!r} is invalid: use a count >= 1, a list of ids, or auto."
        ]
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


# ------------------------------------------------------------------ data.steps_per_batch
def _counts_batches(value: Any) -> bool:
    """A Lightning setting in batches or in a fraction of them: anything but "all" (1.0)."""
    return value is not None and not (isinstance(value, float) and value == 1.0)


def one_step_per_batch_settings(cfg: Any, steps: int) -> dict[str, bool]:
    """The run's settings that need one optimizer step per Lightning batch, each True when
    set: those Lightning counts in batches (each batch holds ``steps`` optimizer steps with
    data.steps_per_batch > 1) and those of automatic optimization. Untested with K > 1:
    several devices and fast_dev_run (Lightning counts its batches too)."""
    trainer, model = cfg.get("trainer") or {}, cfg.get("model") or {}
    every = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return {
        "trainer.gradient_clip_val": bool(trainer.get("gradient_clip_val")),
        "trainer.accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1) != 1,
        "trainer.limit_train_batches": _counts_batches(trainer.get("limit_train_batches")),
        "trainer.val_check_interval": _counts_batches(trainer.get("val_check_interval")),
        "trainer.fast_dev_run": bool(trainer.get("fast_dev_run")),
        "trainer.devices": trainer.get("devices", 1) != 1,
        "model.train_step": model.get("train_step", "automatic") != "automatic",
        "model.lr_stage_growth": bool(model.get("lr_stage_growth", 0)),
        "data.loader": cfg.data.get("loader", "tensor") != "tensor",
        "callbacks.model_checkpoint.every_n_train_steps": bool(
            (every.get("every_n_train_steps") or 0) % steps
        ),
    }


def steps_per_batch(preferred: int, *, _root_: Any) -> int:
    """``${steps_per_batch:8}`` (every conf/data/*.yaml): ``preferred`` optimizer steps per
    Lightning batch, or 1 where a setting of the run needs one per batch. Both train the same
    run (tests/test_steps_per_batch.py); 1 is only slower on a CPU."""
    if any(one_step_per_batch_settings(_root_, preferred).values()):
        return 1
    return preferred


OmegaConf.register_new_resolver("steps_per_batch", steps_per_batch, replace=True)


def steps_per_batch_problems(cfg: Any) -> list[str]:
    """An explicit ``data.steps_per_batch`` K > 1 with a setting that needs one optimizer
    step per batch (the default picks 1 by itself there)."""
    steps = cfg.data.get("steps_per_batch", 1) if "data" in cfg else 1
    if not isinstance(steps, int) or steps <= 1:
        return []
    return [
        f"{key}={OmegaConf.select(cfg, key)} does not go with data.steps_per_batch={steps}: it "
        "needs one optimizer step per Lightning batch (automatic optimization, or a count of "
        "batches). Set data.steps_per_batch=1, or drop the override (a count of steps: use "
        "trainer.max_steps; every_n_train_steps: a multiple of steps_per_batch)."
        for key, conflict in one_step_per_batch_settings(cfg, steps).items()
        if conflict
    ]
