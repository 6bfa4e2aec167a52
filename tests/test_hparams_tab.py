"""TensorBoard's HParams tab of a trained run, asked of TensorBoard's own backend: the
flattened config as hyperparameters, and the final metrics, each logged once."""

import pytest

from helpers.events import hparams_session_groups, written_scalars


def test_hparams_tab_lists_the_flattened_config_with_the_final_metrics(visuals_run):
    (group,) = hparams_session_groups(visuals_run.dir / "tensorboard")
    hparams = {
        name: value.number_value if value.HasField("number_value") else value.string_value
        for name, value in group.hparams.items()
    }
    assert hparams["model"] == "mlp" and hparams["optimizer"] == "adam"  # group choices
    assert hparams["model.latent_dim"] == 5
    assert hparams["model.beta"] == 1.0
    assert hparams["optimizer.lr"] == pytest.approx(1e-3)
    assert hparams["data.batch_size"] == 128
    assert hparams["seed"] == 12345
    assert hparams["model.net.hidden_dims"] == "[400]"
    excluded = ("paths", "callbacks", "logger", "hydra", "data.root", "trainer.default_root")
    assert not [name for name in hparams if name.startswith(excluded)]
    assert "model._recursive_" not in hparams
    assert not [name for name in hparams if name.endswith("_target_")]

    values = {metric.name.tag: metric.value for metric in group.metric_values}
    assert set(values) == {"best/val/bound", "val/elbo", "val/kl", "val/active_units"}  # no test
    for name, value in values.items():
        assert value == pytest.approx(visuals_run.metrics[name], rel=1e-6), name
    # The final values were not logged a second time at a later step.
    steps = [step for step, _ in written_scalars(visuals_run.dir / "tensorboard", "val/elbo")]
    assert len(steps) == len(set(steps)) == 2
