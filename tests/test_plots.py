"""The report's figures: what a user sees in loss_curves.png."""

import numpy as np

from vae_lightning import plots


def drawn_pixels(figure) -> int:
    """Pixels of the training colour in the rendered figure."""
    image = plots.figure_to_array(figure).astype(int)
    train_rgb = np.array([31, 119, 180])  # tab:blue
    return int((np.abs(image - train_rgb).sum(axis=-1) < 30).sum())


def test_a_one_point_training_curve_is_visible():
    """A short run logs one training step: a line of one point draws nothing, markers do."""
    one_point = plots.loss_curves({"loss": ([0], [500.0])}, {})
    assert one_point.axes[0].lines[-1].get_marker() == "o"
    assert drawn_pixels(one_point) > 10


def test_long_training_curves_are_lines_without_markers():
    steps = list(range(1000))
    figure = plots.loss_curves({"loss": (steps, [500.0 - 0.1 * s for s in steps])}, {})
    assert figure.axes[0].lines[-1].get_marker() in (None, "None", "")
