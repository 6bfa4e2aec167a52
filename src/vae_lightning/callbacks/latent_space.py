"""The latent space of ~1,000 validation images: TensorBoard's Projector and a PCA scatter."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from pydantic import PositiveInt
from torch.utils.tensorboard import SummaryWriter

from vae_lightning.callbacks.base import VisualCallback, encode
from vae_lightning.data.registry import class_names
from vae_lightning.models.latent import pca_2d
from vae_lightning.plots import figure_to_array, latent_scatter

PROJECTOR_TAG = "val/latent"


@dataclass(eq=False)
class LatentSpace(VisualCallback):
    """Posterior means E_q[z|x] of ``num_images`` fixed validation images, seen two ways.

    - The Projector tab (``add_embedding``, tag ``val/latent``): the means with each image's
      label and class name as metadata and the images as sprites, to explore with PCA, t-SNE
      or UMAP interactively.
    - ``val/latent_pca``: a scatter of the means projected on their first two principal
      components, coloured by class, for any latent size.

    Each call writes a new Projector checkpoint (``<step>/val_latent/`` in the event folder,
    about 0.5 MB), hence the default of every 5 epochs (and always the last).
    """

    num_images: PositiveInt = 1000
    every_n_epochs: PositiveInt = 5
    projector: bool = True
    pca: bool = True

    def log_visuals(
        self, trainer: L.Trainer, pl_module: L.LightningModule, writer: SummaryWriter
    ) -> None:
        step = trainer.global_step
        mu = encode(pl_module, self.images, self.labels)[0].cpu()  # q(z|x, y) if conditional
        labels = self.labels.cpu()
        names = class_names(getattr(trainer.datamodule, "dataset", None))
        if self.projector:
            metadata = [
                [str(label), names[label] if label < len(names) else str(label)]
                for label in labels.tolist()
            ]
            writer.add_embedding(
                mu,
                metadata=metadata,
                metadata_header=["label", "class"],
                label_img=self.images.float().cpu(),
                global_step=step,
                tag=PROJECTOR_TAG,
            )
        if self.pca:
            coords, explained = pca_2d(mu)
            figure = latent_scatter(
                coords.numpy(),
                labels.numpy(),
                names,
                explained.tolist(),
                f"Posterior means of {len(mu)} validation images, step {step}",
            )
            writer.add_image("val/latent_pca", figure_to_array(figure), step, dataformats="HWC")
