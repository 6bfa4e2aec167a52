"""Lightning callbacks that write what the VAE learned to TensorBoard (rank 0 only)."""

from vae_lightning.callbacks.images import ReconstructionsAndSamples
from vae_lightning.callbacks.interpolations import LatentInterpolations
from vae_lightning.callbacks.latent_space import LatentSpace
from vae_lightning.callbacks.manifold import LatentManifold
from vae_lightning.callbacks.posterior_collapse import PosteriorCollapse
from vae_lightning.callbacks.traversals import LatentTraversals

__all__ = [
    "LatentInterpolations",
    "LatentManifold",
    "LatentSpace",
    "LatentTraversals",
    "PosteriorCollapse",
    "ReconstructionsAndSamples",
]
