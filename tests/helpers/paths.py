"""Where things are: the checkout, its configs, fixtures and the optional real datasets."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
# Real data, when present: the MNIST test split next to a developer's checkout, and Debian's
# dataset-fashion-mnist. Tests that need them skip with a reason when they are absent.
SHARED_MNIST = PROJECT_ROOT.parent / "shared" / "data" / "mnist"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
