"""Checks on a composed config, run before any data is read or any output is written.

Hydra already rejects misspelt keys and unknown group options. What it cannot see is a value
of the wrong type or out of range (``model.latent_dim=abc``, ``optimizer.lr=0``), a
combination a component refuses (``objective.cycle_steps`` without a warm-up), a device count
the machine does not have, or a model that cannot take the data's image shape. Each of those
would otherwise surface minutes later as a torch traceback.

Nothing here knows a key's valid values. Every ``_target_`` node of the config (and each
nested one, like ``model.net``) is checked against the typed signature of its own target
(``signatures.py``); then our components are built once, dry, so their constructors check
what relates several of their parameters. Third-party targets are checked by their own
constructors and by the few limits in ``config_rules.py``, which also holds the rules that
cross groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning.config_rules import (
    builds_conditional,
    conditional_problems,
    device_problems,
    likelihood_data_mismatch,
    limits_of,
    model_output_problem,
    objective_problem,
    steps_per_batch_problems,
)
from vae_lightning.errors import ConfigError
from vae_lightning.signatures import argument_problems

OURS = "vae_lightning."
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")
# Arguments train() gives a group's target from elsewhere in the config (see train.py).
# Arguments a component gets from elsewhere in the config when it is built: by component
# key, the argument's name and the config key it comes from.
PASSED_FROM_ELSEWHERE = {
    "model": {"test_iwae_k": "test_iwae_k"},
    "prior": {"latent_dim": "model.latent_dim"},
    "posterior": {"latent_dim": "model.latent_dim"},
}
# Built for real right after the checks, by build_checked_model: not built twice.
BUILT_LATER = ("model",)
INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")
FIX_TRAIN = (
    "Fix the override(s) on the command line (or the config file that sets them); "
    "`vae-train --cfg job` prints the composed config."
)


def config_error(problems: list[str], fix: str = FIX_TRAIN) -> ConfigError:
    """One ConfigError listing every problem, then what to do."""
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return ConfigError(
        f"Invalid configuration; nothing was run and no file was written:\n{listed}\n{fix}"
    )


def check_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem found, or return if there is none.

    Each component's own checks first; the rules across groups rely on valid values. The
    model is checked against the data shape when it is built (``build_checked_model``).
    """
    # By the key it is about: a key shared by interpolation once. The rules across groups
    # that explain a value better than its component's signature does come first.
    problems: dict[str, str] = dict(conditional_model_problems(cfg))
    for key, node in components(cfg):
        for about, problem in component_problems(cfg, key, node):
            problems.setdefault(about, problem)
    listed = list(problems.values())
    trainer = cfg.get("trainer")
    if not listed and isinstance(trainer, DictConfig) and "devices" in trainer:
        listed = device_problems(trainer.devices, str(trainer.get("accelerator") or "auto"))
    if not listed:
        listed = steps_per_batch_problems(cfg)
    if listed:
        raise config_error(listed)
    likelihood = cfg.get("likelihood")
    if isinstance(likelihood, DictConfig) and "_target_" in likelihood:
        warning = likelihood_data_mismatch(
            get_object(likelihood._target_), str(cfg.data.get("binarize", "none"))
        )
        if warning:
            rank_zero_warn(warning)


def _selected(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, None when absent or when its interpolation does not resolve
    (the component check reports that)."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:
        return None


def _target_object(cfg: DictConfig, key: str) -> Any:
    """The object named by ``<key>._target_``; None when there is none or it cannot be
    imported (the component check reports that)."""
    target = _selected(cfg, f"{key}._target_")
    try:
        return get_object(target) if target else None
    except Exception:
        return None


def conditional_model_problems(cfg: DictConfig) -> dict[str, str]:
    """A conditional network (model=cvae) against the data's labels and the prior."""
    net = _target_object(cfg, "model.net")
    if net is None or not builds_conditional(net):
        return {}
    return conditional_problems(
        _choice("model", f"model.net._target_={_selected(cfg, 'model.net._target_')}"),
        _selected(cfg, "data.num_classes"),
        _selected(cfg, "model.net.num_classes"),
        _choice("data", "the data"),
        _target_object(cfg, "prior"),
        _choice("prior", f"prior._target_={_selected(cfg, 'prior._target_')}"),
    )


def components(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    """Each ``_target_`` node at the top (``model``) or in a named group (``callbacks.x``)."""
    for key in cfg:
        node = cfg.get(key)
        if not isinstance(node, DictConfig):
            continue
        if "_target_" in node:
            yield str(key), node
            continue
        for name in node:
            member = node.get(name)
            if isinstance(member, DictConfig) and "_target_" in member:
                yield f"{key}.{name}", member


Problems = list[tuple[str, str]]  # (the key a problem is about, the problem)


def component_problems(cfg: DictConfig, key: str, node: DictConfig) -> Problems:
    """The node's arguments against its target's signature, then a dry build of it."""
    sources = {
        name: source
        for name, source in PASSED_FROM_ELSEWHERE.get(key, {}).items()
        if OmegaConf.select(cfg, source) is not None
    }
    passed = {name: OmegaConf.select(cfg, source) for name, source in sources.items()}
    problems = node_problems(node, key, passed, sources)
    if problems or key in BUILT_LATER:
        return problems
    try:
        dry_build(node, passed)
    except Exception as err:  # the component's own message says what to set
        return [(key, f"{key}: {root_cause(err)}")]
    return []


def dry_build(node: DictConfig, passed: dict[str, Any]) -> None:
    """Build our components, and optimizers on a dummy parameter, so their constructors check
    what relates several parameters. Other third-party classes are built when they run."""
    target = node._target_
    if target.startswith(OURS):
        instantiate(node, **passed)
    elif issubclass(get_object(target), torch.optim.Optimizer):
        instantiate(node, params=[torch.nn.Parameter(torch.zeros(1))])


def node_problems(
    node: DictConfig, key: str, passed: dict[str, Any], sources: dict[str, str] | None = None
) -> Problems:
    """Problems of one ``_target_`` node and of the ``_target_`` nodes nested in it.

    ``passed`` are the arguments given when it is built, ``sources`` the config keys they
    come from (a problem with one is about that key)."""
    raw = OmegaConf.to_container(node, resolve=False)
    problems: Problems = []
    nested = [name for name, value in raw.items() if is_target_node(value)]
    for name in nested:
        for sub_key, sub_node in nested_nodes(node[name], f"{key}.{name}"):
            problems += node_problems(sub_node, sub_key, {})
    try:
        target = get_object(node._target_)
        checker = target if node._target_.startswith(OURS) else limits_of(target)
        # Resolved only when checked: others may use resolvers registered at launch only.
        values = OmegaConf.to_container(node, resolve=True) if checker else {}
    except Exception as err:
        return [*problems, (key, f"{key}: {root_cause(err)}")]
    if checker is None:
        return problems
    recursive = values.get("_recursive_", True)
    arguments = {
        name: value
        for name, value in values.items()
        if name not in HYDRA_KEYS and not (recursive and name in nested)  # given built objects
    }
    for problem in argument_problems(checker, {**arguments, **passed}):
        own = (sources or {}).get(problem.parameter, f"{key}.{problem.parameter}")
        source = INTERPOLATION.match(str(raw.get(problem.parameter, "")))
        about = source.group(1) if source else own
        where = f" for {own}" if about != own else ""
        problems.append((about, f"{about}={problem.value!r} is invalid{where}: {problem.reason}."))
    return problems


def is_target_node(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value
    return isinstance(value, list) and any(is_target_node(item) for item in value)


def nested_nodes(value: Any, key: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(value, DictConfig) and "_target_" in value:
        yield key, value
    elif isinstance(value, ListConfig):
        for index, item in enumerate(value):
            yield from nested_nodes(item, f"{key}[{index}]")


def root_cause(err: BaseException) -> BaseException:
    """The error under Hydra's InstantiationException (and any other wrapping)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _choice(group: str, fallback: str) -> str:
    """``model=conv`` as the user picked it, when Hydra knows; else a description."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return fallback


def build_checked_model(
    cfg: DictConfig, build: Callable[[], L.LightningModule]
) -> L.LightningModule:
    """``build()`` the model, then run a batch of zeros of ``data.image_shape`` through it.

    A model that cannot be built for, or cannot take, the configured image shape (``model=conv``
    on 32x32 images) raises a ConfigError naming the model and both shapes. The test forward
    pass draws z from a forked RNG, so the seeded training stream is the same with or without.
    """
    # Resolved: a data config may build its shape from other keys (data=image_folder).
    shape = OmegaConf.select(cfg, "data.image_shape", default=None)
    shape = OmegaConf.to_container(shape, resolve=True) if isinstance(shape, ListConfig) else shape
    model_name = _choice("model", f"model._target_={cfg.model.get('_target_')}")
    fix = (
        "Pick a model that fits the data (model=mlp takes any image shape) and a prior and "
        "posterior it takes (docs/models.md, Combinations)."
    )
    net_shape = OmegaConf.select(cfg, "model.net.image_shape", default=None)
    if isinstance(net_shape, ListConfig):
        net_shape = OmegaConf.to_container(net_shape, resolve=True)
    else:
        net_shape = None
    if shape is not None and net_shape is not None and list(net_shape) != list(shape):
        problem = (
            f"is built for images of model.net.image_shape={net_shape}, but the data's are "
            f"data.image_shape={shape}."
        )
        fix = "Leave model.net.image_shape at its default, ${data.image_shape}."
        raise config_error([f"{model_name} {problem}"], fix)
    try:
        model = build()
        problem = None if shape is None else model_output_problem(model, shape)
    except Exception as err:  # any failure to build or run is a config problem here
        shape_text = "the data" if shape is None else f"data.image_shape={shape}"
        problem = f"cannot be built for {shape_text}: {root_cause(err)}"
        raise config_error([f"{model_name} {problem}"], fix) from err
    if problem:
        raise config_error([f"{model_name} {problem}"], fix)
    unsupported = None if shape is None else objective_problem(model, shape)
    if unsupported:
        combination = ", ".join(
            _choice(group, group) for group in ("objective", "model", "prior", "posterior")
        )
        raise config_error(
            [f"{combination} do not combine: {unsupported}"],
            "Pick an objective, model, prior and posterior that combine (docs/models.md).",
        )
    return model
