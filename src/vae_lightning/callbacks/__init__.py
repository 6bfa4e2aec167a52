"""Lightning callbacks: TensorBoard visuals (rank 0 only) and the reliability guards."""

from vae_lightning.callbacks.disentanglement import DisentanglementMetrics
from vae_lightning.callbacks.images import ReconstructionsAndSamples
from vae_lightning.callbacks.interpolations import LatentInterpolations
from vae_lightning.callbacks.latent_space import LatentSpace
from vae_lightning.callbacks.manifold import LatentManifold
from vae_lightning.callbacks.nan_guard import NonFiniteLossError, NonFiniteLossGuard
from vae_lightning.callbacks.posterior_collapse import PosteriorCollapse
from vae_lightning.callbacks.resume import RNGStateCheckpoint, SaveOnInterrupt
from vae_lightning.callbacks.traversals import LatentTraversals

__all__ = [
    "DisentanglementMetrics",
    "LatentInterpolations",
    "LatentManifold",
    "LatentSpace",
    "LatentTraversals",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "PosteriorCollapse",
    "RNGStateCheckpoint",
    "ReconstructionsAndSamples",
    "SaveOnInterrupt",
]
