"""The stagewise learning-rate schedule (Burda et al. 2016): its stages, and a real run."""

import pytest
import torch

from helpers.runs import train_run
from vae_lightning.lr_schedules import stage_of, stagewise_factor


def test_stages_last_growth_to_the_i_epochs():
    # Burda's: stage i = 0..7 lasts 3^i epochs, 3280 in all.
    starts = [sum(3**j for j in range(i)) for i in range(9)]
    assert starts[-1] == 3280
    for stage, (start, end) in enumerate(zip(starts, starts[1:], strict=False)):
        assert stage_of(start, 3) == stage_of(end - 1, 3) == stage
    assert [stage_of(epoch, 1) for epoch in range(4)] == [0, 1, 2, 3]


def test_factor_decays_per_stage_and_holds_after_the_last():
    decay = 10 ** (-1 / 7)
    assert stagewise_factor(0, 3, decay, 8) == 1.0
    assert stagewise_factor(3, 3, decay, 8) == pytest.approx(decay)
    assert stagewise_factor(3279, 3, decay, 8) == pytest.approx(0.1)  # 1e-3 -> 1e-4
    assert stagewise_factor(10**5, 3, decay, 8) == pytest.approx(0.1)


def test_a_run_steps_the_learning_rate_once_per_epoch(tmp_path, idx_root):
    run = train_run(
        tmp_path,
        idx_root,
        [
            "debug=fast",
            "~callbacks.progress_bar",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "test=false",
            "+model.lr_stage_growth=1",
            "+model.lr_stage_decay=0.5",
            "+model.lr_num_stages=8",
        ],
    )
    state = torch.load(run.dir / "checkpoints" / "last.ckpt", weights_only=True)
    epochs_stepped = state["lr_schedulers"][0]["last_epoch"]
    assert epochs_stepped >= 1
    lr = state["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.5**epochs_stepped)
