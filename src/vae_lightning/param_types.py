"""Parameter types that several components share, declared once.

Components annotate their parameters with these and with pydantic's own (``PositiveInt``,
``NonNegativeFloat``, ...) or ``Literal[...]``; ``signatures.argument_problems`` checks a
config against those annotations before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from annotated_types import Len
from pydantic import Field, PositiveInt

# (channels, height, width) of one image.
ImageShape = Annotated[Sequence[PositiveInt], Len(3, 3)]
# What numpy's and Lightning's seeding accept.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
