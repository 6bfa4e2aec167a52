"""Pure PyTorch VAE building blocks: no Lightning, no Hydra."""

from vae_lightning.models.resnet import resnet_vae
from vae_lightning.models.vae import VAE, conv_vae, mlp_vae

__all__ = ["VAE", "conv_vae", "mlp_vae", "resnet_vae"]
