"""A NaN batch in a real run: `stop` saves the pre-step weights and names step and terms;
`skip` leaves the weights exactly as they were and training goes on."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch

from helpers.events import scalar_series
from vae_lightning.callbacks import NonFiniteLossError
from vae_lightning.train import train

RUN = ["debug=fast", "~callbacks.progress_bar", "~callbacks.images", "test=false"]


def inject_nan_at(step: int, count: int = 1) -> list[str]:
    return [
        "+callbacks.nan_batch._target_=fault_injection.NaNBatches",
        f"+callbacks.nan_batch.start={step}",
        f"+callbacks.nan_batch.count={count}",
    ]


class WeightsAtBatchStart(L.Callback):
    """Copies of the weights at the start of every training step (test probe)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        self.weights[trainer.global_step] = {
            name: value.detach().clone() for name, value in pl_module.state_dict().items()
        }


@pytest.fixture
def probe(monkeypatch) -> WeightsAtBatchStart:
    """Adds the probe to the callbacks train() builds."""
    import vae_lightning.train as train_module

    probe = WeightsAtBatchStart()
    build = train_module.instantiate_named
    monkeypatch.setattr(
        train_module, "instantiate_named", lambda group: [*build(group), probe] if group else []
    )
    return probe


def test_nan_batch_stops_with_step_terms_and_emergency_checkpoint(compose_train, tmp_path, probe):
    cfg = compose_train([*RUN, *inject_nan_at(2)])
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "Non-finite training loss at step 2 (epoch 0, batch 2)" in message
    assert "non-finite train/loss" in message
    assert "train/rec=nan" in message and "train/kl=nan" in message
    assert "nan_policy=skip" in message

    emergency = tmp_path / "checkpoints" / "nonfinite_step_000002.ckpt"
    assert str(emergency) in message
    saved = torch.load(emergency, weights_only=True)
    assert saved["global_step"] == 2
    for name, value in probe.weights[2].items():  # the weights just before the bad step
        assert torch.equal(saved["state_dict"][name], value), name

    # Flushed on the way out: the two good steps are on disk.
    assert [step for step, _ in scalar_series(tmp_path, "train/loss")] == [0, 1]


def test_infinite_kl_is_named_as_the_culprit(compose_train, monkeypatch):
    """Only the KL overflows (huge posterior mean): the message says kl, not rec."""
    cfg = compose_train(RUN)
    from vae_lightning.models.encoders import GaussianHead

    forward = GaussianHead.forward

    def huge_mean(self, h):
        mu, logvar = forward(self, h)
        return mu + 1e20, logvar  # kl = mu^2 / 2 overflows float32; z stays finite

    monkeypatch.setattr(GaussianHead, "forward", huge_mean)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "at step 0" in message and "train/kl=inf" in message
    assert "train/rec=nan" not in message and "train/rec=inf" not in message


def test_skip_policy_leaves_weights_untouched_and_carries_on(compose_train, probe):
    cfg = compose_train([*RUN, "nan_policy=skip", *inject_nan_at(2)])
    with pytest.warns(UserWarning, match=r"at step 2 \(epoch 0, batch 2\).*Batch skipped"):
        metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/elbo"]))
    before, after = probe.weights[2], probe.weights[3]
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not all(torch.equal(probe.weights[1][n], before[n]) for n in before)  # others step
    assert metrics["train/skipped_batches"] == 1


def test_skip_policy_stops_when_every_batch_is_bad(compose_train):
    overrides = ["nan_policy=skip", "callbacks.nan_guard.max_consecutive_skips=2"]
    cfg = compose_train([*RUN, *overrides, *inject_nan_at(1, count=10)])
    with (
        pytest.raises(NonFiniteLossError, match=r"at step 3 .*\(3 batches in a row"),
        pytest.warns(UserWarning, match="Batch skipped"),
    ):
        train(cfg)
