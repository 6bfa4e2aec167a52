"""Lightning callbacks that write what the VAE learned to TensorBoard (rank 0 only)."""

from vae_lightning.callbacks.images import ReconstructionsAndSamples

__all__ = ["ReconstructionsAndSamples"]
