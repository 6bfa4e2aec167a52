"""Lightning callbacks: TensorBoard visuals (rank 0 only) and the reliability guards."""

from vae_lightning.callbacks.images import ReconstructionsAndSamples
from vae_lightning.callbacks.nan_guard import NonFiniteLossError, NonFiniteLossGuard
from vae_lightning.callbacks.resume import RNGStateCheckpoint, SaveOnInterrupt

__all__ = [
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "RNGStateCheckpoint",
    "ReconstructionsAndSamples",
    "SaveOnInterrupt",
]
