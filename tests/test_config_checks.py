"""The config check accepts every shipped option and parses device requests as Lightning does."""

import pytest

from helpers.paths import CONF_DIR
from vae_lightning.config_checks import ConfigError, check_config, requested_devices


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={option}"
        for group in (
            "model",
            "optimizer",
            "data",
            "likelihood",
            "objective",
            "experiment",
            "debug",
        )
        for option in options(group)
    ]
    + ["trainer=cpu", "trainer=default"],
)
def test_every_shipped_option_passes(compose_train, override):
    check_config(compose_train([override]))


def test_unknown_keys_pass_known_keys_are_checked(compose_train):
    check_config(compose_train(["+model.some_new_option=whatever", "+brand_new_key=1"]))
    with pytest.raises(ConfigError, match=r"model.beta=inf is invalid"):
        check_config(compose_train(["model.beta=inf"]))
    with pytest.raises(ConfigError, match=r"model.net.hidden_dims=\[400, 0\] is invalid"):
        check_config(compose_train(["model.net.hidden_dims=[400,0]"]))


@pytest.mark.parametrize(
    ("devices", "count"),
    [(1, 1), (4, 4), ("3", 3), ("0,1", 2), ([0, 2], 2), ("auto", None), (-1, None), ("-1", None)],
)
def test_requested_devices(devices, count):
    assert requested_devices(devices) == count
