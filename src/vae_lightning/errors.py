"""Errors caused by what the user asked for, and how every console script reports them.

A :class:`UserError` is bad input (a config value, a data file, a checkpoint, a run dir) whose
message is one paragraph that says what is wrong and what to do. The console scripts print it
without a traceback, which would only bury it, and exit with status 2 (the Unix convention for
a usage error; 1 stays for a crash). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input; the message says what is wrong and what to do, in one paragraph."""


class ConfigError(UserError, ValueError):
    """The composed config holds a value, or a combination, that cannot work."""


def report_user_errors(prog: str) -> Callable[[F], F]:
    """Decorate a console script's function: a UserError prints ``prog: error: <message>``
    on stderr and exits with status 2, instead of a traceback.

    Put it inside ``@hydra.main`` (on the task function), so it also catches errors raised
    while the task runs; Hydra would otherwise print them with its own traceback.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except UserError as err:
                print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_USER_ERROR) from None

        return wrapper  # type: ignore[return-value]

    return decorate
