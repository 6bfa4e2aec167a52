"""Where the configs live, and composing one in-process as its entry point would.

The entry points (train, evaluate, report) read ``conf/`` from here; tests, benchmarks and
notebooks compose through :func:`compose_as_launched` to get the config a launch would get.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# The repository's conf/, next to src/ (the package is installed editable with `pip install -e`).
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


def compose_as_launched(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` in-process as its entry point would get it.

    For tests, benchmarks and notebooks that call ``train(cfg)`` or ``evaluate(cfg)``. Needs an
    initialised Hydra (``hydra.initialize_config_dir(CONFIG_PATH)``). Sets the HydraConfig, so
    ``${hydra:...}`` resolves and ``HydraConfig.get()`` works as in a launch, and returns the
    config without its ``hydra`` node, as ``@hydra.main`` hands it over.
    """
    cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
