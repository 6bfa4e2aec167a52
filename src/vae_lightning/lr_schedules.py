"""Learning-rate schedules, as pure functions of the epoch (so they survive a resume).

Burda, Grosse & Salakhutdinov (2016) train in stages: stage i = 0, 1, ... lasts 3^i epochs at
a learning rate of 1e-3 * 10^(-i/7), 3280 epochs for i = 0..7. :func:`stagewise_factor` is
that multiplier for any growth and decay; the lit module hands it to ``LambdaLR``.
"""

from __future__ import annotations


def stage_of(epoch: int, growth: int) -> int:
    """The stage an epoch falls in when stage i lasts ``growth``^i epochs (growth >= 1)."""
    stage, end = 0, 1
    while epoch >= end:
        stage += 1
        end += growth**stage
    return stage


def stagewise_factor(epoch: int, growth: int, decay: float, num_stages: int) -> float:
    """``decay``^i in stage i, held at the last stage's value after ``num_stages`` stages."""
    return decay ** min(stage_of(epoch, growth), num_stages - 1)
