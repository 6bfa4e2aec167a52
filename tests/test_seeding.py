"""vae_lightning/seeding.py: which seed feeds which draws (the runs that depend on it are
tested in test_resume.py, test_ddp.py and test_evaluate.py)."""

import random

import numpy as np
import torch

from vae_lightning import seeding


def test_evaluation_fork_leaves_the_training_stream_untouched():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    fork = seeding.fork_for_evaluation(torch.device("cpu"))
    first_eval_draw = torch.rand(2)
    fork.close()
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(seeding.EVAL_SEED)
    assert torch.equal(first_eval_draw, torch.rand(2))  # evaluation starts from EVAL_SEED


def test_eval_batches_are_numbered_in_the_single_process_order():
    """Rank r of N evaluates batches r, r + N, ...: together they cover 0, 1, 2, ... once."""
    seeds = sorted(seeding.eval_batch_seed(i, 3, rank) for i in range(4) for rank in range(3))
    assert seeds == [seeding.EVAL_SEED + n for n in range(12)]
    generator = seeding.iwae_generator(torch.device("cpu"), 5)
    assert torch.equal(
        torch.rand(3, generator=generator),
        torch.rand(3, generator=torch.Generator().manual_seed(seeding.IWAE_STREAM + 5)),
    )


def test_training_streams_are_seed_plus_rank(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # put back as it was afterwards
    seeding.seed_everything(11)  # sets PL_GLOBAL_SEED, as Lightning passes it to DDP children
    seeding.seed_training_stream(rank=2)
    draw = torch.rand(3)
    torch.manual_seed(13)
    assert torch.equal(draw, torch.rand(3))
    monkeypatch.delenv("PL_GLOBAL_SEED")
    state = torch.get_rng_state()
    seeding.seed_training_stream(rank=1)  # an unseeded run stays unseeded
    assert torch.equal(torch.get_rng_state(), state)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # put back as it was afterwards
    seeding.seed_everything(5)
    torch.save(seeding.rng_states(), tmp_path / "states.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    seeding.set_rng_states(torch.load(tmp_path / "states.pt", weights_only=True))
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]
