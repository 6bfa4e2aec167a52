"""A sweep's final metrics against each numeric hyperparameter it swept (``vae-report``).

A multirun such as ``vae-train -m experiment=dsprites_beta model.beta=1,2,4,8,16`` varies one
override key over numbers. For every such key this writes one figure per metric (the metric's
last value in each job against the key's value, log2 axis when the values span a factor of 4
or more, as beta sweeps do) and a markdown table, one row per job in the key's order. Jobs
that also differ in other overrides (a second swept key, objective=elbo,beta_tc) are drawn as
one line each per combination of those. Everything is read from the jobs' TensorBoard events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # report.py imports this module when it writes a sweep's report
    from vae_lightning.report import RunEvents

# Plotted and tabled when a job logged them, in this order; the trade-off of beta-VAEs is
# reconstruction (val/rec) against the disentanglement figures (docs/metrics.md).
SWEEP_METRICS = (
    "val/elbo",
    "val/rec",
    "val/kl",
    "val/mig",
    "val/dci_disentanglement",
    "val/dci_completeness",
    "val/dci_informativeness",
    "val/sap",
    "val/factorvae_score",
    "val/tc",
    "val/active_units",
)
# Short column titles for the table.
LABELS = {
    "val/mig": "MIG",
    "val/dci_disentanglement": "DCI D",
    "val/dci_completeness": "DCI C",
    "val/dci_informativeness": "DCI I",
    "val/sap": "SAP",
    "val/factorvae_score": "FactorVAE",
    "val/tc": "TC (Gaussian)",
    "val/active_units": "active units",
}
LOG2_SPAN = 4.0  # max/min of positive values from which the x axis is log2


@dataclass
class SweptJob:
    """One finished job: its overrides as key -> value, and what it logged."""

    name: str
    overrides: dict[str, str]
    events: RunEvents


def override_items(overrides: Sequence[str]) -> dict[str, str]:
    """``["+a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (deletions ``~key`` are left out)."""
    items = {}
    for override in overrides:
        if "=" not in override or override.startswith("~"):
            continue
        key, value = override.split("=", 1)
        items[key.lstrip("+")] = value
    return items


def as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def numeric_axes(jobs: Sequence[SweptJob]) -> list[str]:
    """Override keys set in every job to a number, with at least two different numbers."""
    if len(jobs) < 2:
        return []
    keys = [key for key in jobs[0].overrides if all(key in job.overrides for job in jobs)]
    axes = []
    for key in keys:
        numbers = [as_number(job.overrides[key]) for job in jobs]
        if all(number is not None for number in numbers) and len(set(numbers)) > 1:
            axes.append(key)
    return axes


def use_log2(values: Sequence[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= LOG2_SPAN


def group_name(job: SweptJob, axis: str, varying: Sequence[str]) -> str:
    """The job's other varying overrides (its line in the figure), or '' when none."""
    return " ".join(
        f"{key}={job.overrides[key]}" for key in varying if key != axis and key in job.overrides
    )


def file_name(metric: str, axis: str) -> str:
    return f"{metric.replace('/', '_')}_vs_{axis}.png"


def cell(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def write_axis_reports(
    out: Path, jobs: Sequence[SweptJob], metrics: Sequence[str] = SWEEP_METRICS
) -> list[str]:
    """Figures under ``out`` for every numeric swept key; return the markdown section."""
    from vae_lightning import plots  # matplotlib only when a report is written

    logged = [m for m in metrics if any(m in job.events.scalars for job in jobs)]
    axes = numeric_axes(jobs)
    if not logged or not axes:
        return []
    first = jobs[0].overrides
    shared = {key for key in first if all(job.overrides.get(key) == first[key] for job in jobs)}
    varying = sorted({key for job in jobs for key in job.overrides} - shared)
    lines: list[str] = []
    for axis in axes:
        ordered = sorted(jobs, key=lambda job: (as_number(job.overrides[axis]), job.name))
        x_values = [as_number(job.overrides[axis]) for job in ordered]
        log2 = use_log2(x_values)
        others = [key for key in varying if key != axis]
        lines += ["", f"## Against `{axis}`", ""]
        lines += [
            f"The last value of each metric in every job against {axis}"
            + (" (log2 axis)" if log2 else "")
            + (f"; one line per {', '.join(others)}" if others else "")
            + ".",
            "",
            "| job | " + " | ".join([axis, *others, *(LABELS.get(m, m) for m in logged)]) + " |",
            "| --- | " + " | ".join("---:" for _ in [axis, *others, *logged]) + " |",
        ]
        for job in ordered:
            cells = [job.overrides[axis], *(job.overrides.get(k, "") for k in others)]
            cells += [cell(job.events.last(metric)) for metric in logged]
            lines.append(f"| {job.name} | " + " | ".join(cells) + " |")
        for metric in logged:
            series: dict[str, tuple[list[float], list[float]]] = {}
            for job, x in zip(ordered, x_values, strict=True):
                value = job.events.last(metric)
                if value is not None:
                    xs, ys = series.setdefault(group_name(job, axis, others), ([], []))
                    xs.append(x)
                    ys.append(value)
            name = file_name(metric, axis)
            plots.save_png(plots.metric_against(series, axis, metric, log2), out / name)
            lines += ["", f"![{metric} against {axis}]({name})"]
    return lines
