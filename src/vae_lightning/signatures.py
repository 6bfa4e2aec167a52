"""Check arguments against a callable's own typed signature, without calling it.

Each component declares its parameters and their valid values once, in its signature:
``latent_dim: PositiveInt``, ``policy: Literal["stop", "skip"]``, ``beta: NonNegativeFloat``.
pydantic reads those annotations: :func:`parameters_model` turns a signature into a pydantic
model (once per callable) and :func:`argument_problems` checks given arguments against it.
The callables stay undecorated, because Lightning's ``save_hyperparameters`` inspects the
constructor's own frame, and they cost nothing when called from Python.

The check is strict, as the callable would see the values: the string ``"5"`` is not an
integer, ``2.0`` is not an int, ``true`` is not a number, and ``inf``/``nan`` are not numbers.
A parameter without an annotation (or with one pydantic cannot read) accepts anything.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

STRICT = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class ArgumentProblem:
    """``parameter=value`` cannot work; ``reason`` says what is allowed ("it should be ...")."""

    parameter: str
    value: Any
    reason: str


def display_name(target: Callable[..., Any]) -> str:
    return getattr(target, "__name__", repr(target))


def _annotations(target: Callable[..., Any]) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # a hint that names something not importable at run time
        return {}


def _readable(annotation: Any) -> Any:
    """The annotation if pydantic can check it, else Any."""
    try:
        TypeAdapter(annotation, config=STRICT)
    except Exception:
        return Any
    return annotation


@functools.cache
def parameters_model(target: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model of ``target``'s keyword parameters; none is required, so it checks
    whatever subset of arguments is given (the caller may pass others itself)."""
    signature = inspect.signature(target)
    hints = _annotations(target)
    fields: dict[str, Any] = {}
    takes_any_keyword = False
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any_keyword = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            fields[name] = (_readable(hints.get(name, Any)), None)
    config = ConfigDict(**STRICT, extra="allow" if takes_any_keyword else "forbid")
    return create_model(f"{display_name(target)}Parameters", __config__=config, **fields)


def _reason(errors: list[dict[str, Any]]) -> str:
    """One sentence from pydantic's errors for one parameter (a union gives one per member)."""
    reasons: list[str] = []
    for error in errors:
        items = [part for part in error["loc"][1:] if isinstance(part, int)]
        subject = " ".join(f"item {index}" for index in items) or "it"
        text = error["msg"].removeprefix("Input ").removeprefix("Value ")
        text = text.replace(" after validation", "")
        reason = f"{subject} {text[:1].lower()}{text[1:]}"
        if reason not in reasons:
            reasons.append(reason)
    return " or ".join(reasons)


def argument_problems(
    target: Callable[..., Any], arguments: Mapping[str, Any]
) -> list[ArgumentProblem]:
    """What is wrong with calling ``target(**arguments)``, judged by its annotations alone.

    ``arguments`` are plain data (lists, dicts, scalars). Unknown parameter names are
    problems unless ``target`` takes ``**kwargs``.
    """
    try:
        parameters_model(target).model_validate(dict(arguments))
    except ValidationError as err:
        by_parameter: dict[str, list[dict[str, Any]]] = {}
        for error in err.errors():
            by_parameter.setdefault(str(error["loc"][0]), []).append(error)
        problems = []
        for name, errors in by_parameter.items():
            if errors[0]["type"] == "extra_forbidden":
                known = ", ".join(parameters_model(target).model_fields) or "none"
                reason = f"{display_name(target)} has no parameter {name} (it takes {known})"
            else:
                reason = _reason(errors)
            problems.append(ArgumentProblem(name, arguments[name], reason))
        return problems
    return []
