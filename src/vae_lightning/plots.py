"""Matplotlib figures for TensorBoard images and the PNG report, drawn with the Agg backend.

Figures are built with ``matplotlib.figure.Figure`` and an explicit Agg canvas, never pyplot:
no global state, no display needed, safe in training processes and dataloader workers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
TRAIN_COLOUR, VAL_COLOUR = "tab:blue", "tab:orange"
CLASS_COLOURS = "tab10"
MARKERS_BELOW = 30  # points per curve under which each point is marked

# One curve: (steps, values).
Series = tuple[Sequence[float], Sequence[float]]


def new_figure(width: float, height: float, **kwargs) -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by Agg (``DPI`` pixels per inch)."""
    figure = Figure(figsize=(width, height), dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render to an (H, W, 3) uint8 array of exactly width*DPI x height*DPI pixels."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def latent_scatter(
    coords: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    explained: Sequence[float],
    title: str,
) -> Figure:
    """Points in the plane of two principal components, one colour per class."""
    figure = new_figure(7.0, 5.0, layout="constrained")
    axes = figure.add_subplot()
    cmap = colormaps[CLASS_COLOURS]
    for label in np.unique(labels):
        chosen = labels == label
        name = names[int(label)] if 0 <= int(label) < len(names) else str(label)
        axes.scatter(
            coords[chosen, 0],
            coords[chosen, 1],
            s=8,
            alpha=0.75,
            color=cmap(int(label) % cmap.N),
            label=name,
            linewidths=0,
        )
    axes.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
    axes.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
    axes.set_title(title)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    return figure


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's exponential moving average, debiased so the start is not pulled to 0."""
    out, last = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        out[i] = last / (1 - weight ** (i + 1))
    return out


def loss_curves(
    train: Mapping[str, Series], val: Mapping[str, Series], points_per_span: int = 50
) -> Figure:
    """One panel per ELBO term: training per step (raw and smoothed), validation per epoch.

    The training curve is smoothed over about 1/``points_per_span`` of its length, so short
    runs are shown raw and long ones are readable.
    """
    terms = [term for term in ("loss", "rec", "kl") if term in train or term in val]
    figure = new_figure(4.5 * max(len(terms), 1), 3.8, layout="constrained")
    for index, term in enumerate(terms, start=1):
        axes = figure.add_subplot(1, len(terms), index)
        if term in train:
            steps, values = train[term]
            weight = max(0.0, 1.0 - points_per_span / max(len(values), 1))
            if weight > 0:
                axes.plot(steps, values, color=TRAIN_COLOUR, alpha=0.25, linewidth=0.8)
            # A line needs two points: a short run (one logged step) shows as markers.
            marker = "o" if len(values) < MARKERS_BELOW else None
            axes.plot(
                steps,
                smooth(values, weight),
                color=TRAIN_COLOUR,
                marker=marker,
                markersize=3,
                label="train",
            )
        if term in val:
            steps, values = val[term]
            axes.plot(steps, values, color=VAL_COLOUR, marker="o", markersize=3, label="val")
        axes.set_title(f"{term} (nats per image)")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def image_figure(image: np.ndarray, title: str, zoom: int = 2) -> Figure:
    """An image grid shown pixel for pixel (``zoom`` times enlarged) under a wrapped title."""
    height, width = (zoom * n / DPI for n in image.shape[:2])
    lines = textwrap.wrap(title, width=max(30, int(width * DPI / 7)))
    header = 0.1 + 0.2 * len(lines)
    figure = new_figure(width, height + header)
    axes = figure.add_axes((0.0, 0.0, 1.0, height / (height + header)))
    axes.imshow(image, cmap="gray", interpolation="nearest", vmin=0, vmax=255)
    axes.set_axis_off()
    figure.text(0.5, 1.0 - 0.05 / (height + header), "\n".join(lines), ha="center", va="top")
    return figure


def comparison_curves(curves: Mapping[str, Series], metric: str) -> Figure:
    """One validation curve per job of a sweep, for the multirun report."""
    figure = new_figure(7.0, 4.5, layout="constrained")
    axes = figure.add_subplot()
    for name, (steps, values) in curves.items():
        axes.plot(steps, values, marker="o", markersize=3, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def metric_against(
    series: Mapping[str, Series], parameter: str, metric: str, log2: bool = False
) -> Figure:
    """A sweep's final ``metric`` against a swept hyperparameter: one line per group of jobs
    (the label '' when the sweep has no other varying override), each point a job."""
    figure = new_figure(5.5, 4.0, layout="constrained")
    axes = figure.add_subplot()
    ticks: set[float] = set()
    for name, (values, metrics) in series.items():
        axes.plot(values, metrics, marker="o", label=name or None)
        ticks.update(values)
    if log2:
        axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(ticks), [f"{tick:g}" for tick in sorted(ticks)])
    axes.minorticks_off()
    axes.set_xlabel(parameter + (" (log2 scale)" if log2 else ""))
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} against {parameter}")
    axes.grid(alpha=0.3)
    if any(series):
        axes.legend(fontsize=8)
    return figure
