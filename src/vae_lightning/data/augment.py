"""Augmentations applied to whole batches on the device they train on.

They draw from torch's global RNG of that device: the training stream, which seeding.py seeds
per DDP rank and the RNG-state callback saves in checkpoints, so a resumed run flips the same
images as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_hflip(images: Tensor) -> Tensor:
    """Mirror each image of an (N, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
