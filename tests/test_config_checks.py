"""The config check: every shipped option passes, every bad value of a checked key is named,
and the checker reads each component's own typed signature."""

from typing import Literal

import pytest
from pydantic import PositiveInt

from helpers.paths import CONF_DIR
from helpers.runs import compose_data_option, output_overrides
from vae_lightning.config_checks import ConfigError, check_config
from vae_lightning.config_rules import requested_devices
from vae_lightning.configs import compose_as_launched
from vae_lightning.signatures import argument_problems


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
def test_every_shipped_option_passes(compose_train, tmp_path, override):
    if override.startswith("data="):  # each data config as it ships, whatever its format
        data = override.removeprefix("data=")
        required = [f"data.root={tmp_path}"] if data == "image_folder" else []  # root: ???
        check_config(compose_data_option(tmp_path, data, required))
    elif override.startswith("experiment="):  # as it ships: it may bring its own data
        check_config(compose_as_launched("train", [override, *output_overrides(tmp_path)]))
    else:
        check_config(compose_train([override]))


# Every key the former hand-written rule table checked, with a value it rejected; each is now
# rejected by the signature of the component the key goes to (or by config_rules' limits).
REJECTED = [
    (["seed=-1"], "seed=-1"),
    (["seed=4294967296"], "seed=4294967296"),
    (["nan_policy=maybe"], "nan_policy='maybe'"),
    (["callbacks.nan_guard.max_consecutive_skips=-1"], "max_consecutive_skips=-1"),
    (["model.latent_dim=0"], "model.latent_dim=0"),
    (["model.beta=-1"], "model.beta=-1"),
    (["model.net.hidden_dims=[400,0]"], "model.net.hidden_dims=[400, 0]"),
    (["model=conv", "model.net.hidden_dim=0"], "model.net.hidden_dim=0"),
    (["model=conv", "model.net.channels=[]"], "model.net.channels=[]"),
    (["model.net.activation=sigmoid"], "model.net.activation='sigmoid'"),
    (["model.net.init=he"], "model.net.init='he'"),
    (["optimizer.lr=0"], "optimizer.lr=0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum=1"),
    (["data.dataset=cifar"], "data.dataset='cifar'"),
    (["data.image_shape=[1,28]"], "data.image_shape=[1, 28]"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
    (["data.val_size=0"], "data.val_size=0"),
    (["data.binarize=x"], "data.binarize='x'"),
    (["data.loader=x"], "data.loader='x'"),
    (["data.num_workers=-1"], "data.num_workers=-1"),
    (["data.split_seed=-1"], "data.split_seed=-1"),
    (["data.download=maybe"], "data.download='maybe'"),
    (["data.verify_checksums=maybe"], "data.verify_checksums='maybe'"),
    (["test_iwae_k=-1"], "test_iwae_k=-1"),
    (["likelihood=gaussian", "likelihood.variance=x"], "likelihood.variance='x'"),
    (["likelihood=gaussian", "likelihood.std=0"], "likelihood.std=0"),
    (["likelihood=gaussian", "likelihood.min_std=0"], "likelihood.min_std=0"),
    (["objective=iwae", "objective.k=0"], "objective.k=0"),
    (["objective.kl_warmup_steps=-1"], "objective.kl_warmup_steps=-1"),
    (["objective.cycle_steps=-1"], "objective.cycle_steps=-1"),
    (["objective.free_bits=-1"], "objective.free_bits=-1"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs=-2"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0"),
]


@pytest.mark.parametrize(("overrides", "named"), REJECTED, ids=[r[1] for r in REJECTED])
def test_every_formerly_checked_key_still_rejects_a_bad_value(compose_train, overrides, named):
    with pytest.raises(ConfigError) as info:
        check_config(compose_train(overrides))
    assert named in str(info.value)
    assert str(info.value).count("\n  - ") == 1  # that one problem, nothing else


def test_messages_name_key_value_and_what_is_allowed(compose_train):
    with pytest.raises(ConfigError) as info:
        check_config(compose_train(["model.beta=inf", "nan_policy=maybe", "data.binarize=x"]))
    message = str(info.value)
    assert "model.beta=inf is invalid: it should be a finite number." in message
    # A key passed on by interpolation is named as the user set it, and where it goes.
    assert (
        "nan_policy='maybe' is invalid for callbacks.nan_guard.policy: it should be 'stop' or "
        "'skip'." in message
    )
    assert "data.binarize='x' is invalid: it should be 'dynamic', 'static' or 'none'." in message


def test_new_top_level_keys_pass_unknown_arguments_are_named(compose_train):
    check_config(compose_train(["+brand_new_key=1"]))
    with pytest.raises(ConfigError, match=r"model.some_new_option='x' is invalid: VAELitModule"):
        check_config(compose_train(["+model.some_new_option=x"]))


def test_a_key_shared_by_interpolation_is_reported_once(compose_train):
    with pytest.raises(ConfigError) as info:
        check_config(compose_train(["data.image_shape=[1,0,28]"]))
    assert str(info.value).count("data.image_shape=") == 1


def test_strict_types_no_string_or_float_coercion():
    def component(count: PositiveInt = 1, mode: Literal["a", "b"] = "a") -> None:
        """A stand-in component."""

    assert argument_problems(component, {"count": 3, "mode": "b"}) == []
    for bad in ("3", 3.0, True):
        assert [p.parameter for p in argument_problems(component, {"count": bad})] == ["count"]
    assert argument_problems(component, {"colour": 1})[0].reason.startswith(
        "component has no parameter colour"
    )


@pytest.mark.parametrize(
    ("devices", "count"),
    [(1, 1), (4, 4), ("3", 3), ("0,1", 2), ([0, 2], 2), ("auto", None), (-1, None), ("-1", None)],
)
def test_requested_devices(devices, count):
    assert requested_devices(devices) == count
