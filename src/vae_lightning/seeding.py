"""Every random stream of a run, in one place: which seed feeds which draws, and why.

- **The global seed** (config ``seed``) seeds torch, numpy and Python, and the DataLoader
  workers, through Lightning's ``seed_everything``: :func:`seed_everything`.
- **Training streams**: ``seed_everything`` gives every DDP rank the same seed, hence the same
  binarization and reparameterisation noise on different images. Rank r draws from
  ``seed + r`` instead (rank 0 = a single process): :func:`seed_training_stream`. The dynamic
  binarization and the random flips of ``data.hflip`` (data/augment.py) draw from it too,
  on the training device, so resume replays them.
- **Evaluation** draws its z samples on a forked RNG seeded with :data:`EVAL_SEED`, so val/test
  metrics depend on the weights only (a reloaded checkpoint reproduces them) and the training
  stream is left untouched: :func:`fork_for_evaluation`. Each evaluation batch is reseeded
  from its number in the single-process order (rank r of N evaluates batches r, r + N, ...:
  data/loaders.py), so DDP metrics equal one process's: :func:`seed_eval_batch`.
- **Importance samples** of ``test/nll_iwae`` come from their own generator, seeded like the
  batch but offset by :data:`IWAE_STREAM`, apart from the ELBO's draws: :func:`iwae_generator`.
- **The smoke forward pass** of the config check runs on a forked RNG
  (:func:`forked_rng`), so the seeded training stream is the same with or without it.
- **Exact resume** saves and restores torch (CPU, CUDA), numpy and Python RNG states
  (:func:`rng_states`, :func:`set_rng_states`; callbacks/resume.py decides when).

The data's own seeds (the validation split, the fixed binarization of evaluation images, the
per-epoch shuffle) are constructor arguments of the data module and its loaders.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

EVAL_SEED = 0
IWAE_STREAM = 10**9  # offsets the importance samples' seeds from the ELBO's


def seed_everything(seed: int | None) -> None:
    """Seed torch, numpy, Python and the loader workers; ``None`` leaves the run unseeded."""
    if seed is not None:
        L.seed_everything(seed, workers=True)


def seed_training_stream(rank: int) -> None:
    """Give DDP rank ``rank`` its own stream, ``seed + rank``, if the run was seeded."""
    # seed_everything leaves the seed in PL_GLOBAL_SEED, which Lightning passes to DDP children.
    if (seed := os.environ.get("PL_GLOBAL_SEED")) is not None:
        torch.manual_seed(int(seed) + rank)


def forked_rng(device: torch.device | None = None) -> contextlib.AbstractContextManager:
    """A context in which torch's CPU RNG (and ``device``'s, if a GPU) can be used and is put
    back as it was on exit."""
    cuda = [device] if device is not None and device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def fork_for_evaluation(device: torch.device) -> contextlib.ExitStack:
    """Fork the RNG for an evaluation epoch and seed it with EVAL_SEED; ``close()`` restores."""
    stack = contextlib.ExitStack()
    stack.enter_context(forked_rng(device))
    torch.manual_seed(EVAL_SEED)
    return stack


def eval_batch_seed(batch_idx: int, world_size: int, rank: int) -> int:
    """The seed of this rank's ``batch_idx``-th evaluation batch: its single-process number."""
    return EVAL_SEED + batch_idx * world_size + rank


def seed_eval_batch(batch_idx: int, world_size: int, rank: int) -> None:
    torch.manual_seed(eval_batch_seed(batch_idx, world_size, rank))


def iwae_generator(device: torch.device, batch_seed: int) -> torch.Generator:
    """The importance samples' generator for the batch with seed ``batch_seed``."""
    return torch.Generator(device).manual_seed(IWAE_STREAM + batch_seed)


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, lists and numbers only,
    so that checkpoints still load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back the states :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        else:
            rank_zero_warn("The checkpoint's CUDA RNG states are for another GPU count; not set.")
