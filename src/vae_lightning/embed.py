"""Entry point: ``vae-embed ckpt_path=<run dir>/checkpoints/<name>.ckpt split=test``.

Encodes every image of a split of the checkpoint's data and writes into its own run
directory (or ``out_dir=``):

- ``embeddings.npz``: ``codes`` (N, D) posterior means of :meth:`VAE.encode_code`,
  ``logvars`` (N, D), ``labels`` (N,) and ``class_names``;
- ``data.yaml``: the data config the images came from (the run's, with any overrides);
- ``projector/``: a TensorBoard run for the Projector tab (``tensorboard --logdir
  <dir>/projector``), each point labelled with its class and, where the sprite fits
  TensorBoard's 8192-pixel limit, shown as its thumbnail.

The data config is found as vae-eval finds it (``<run dir>/.hydra/config.yaml``;
``data.key=value`` and ``data=<option>`` change it). Images are encoded as evaluation sees
them: the fixed binarization of val/test, pixel intensities (no fresh draw) for train.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pydantic import PositiveInt
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from vae_lightning.config_checks import config_error
from vae_lightning.configs import CONFIG_PATH
from vae_lightning.data.datamodule import prepare_images
from vae_lightning.data.registry import class_names
from vae_lightning.errors import report_user_errors
from vae_lightning.evaluate import data_config
from vae_lightning.inference import checked_checkpoint, load_module, output_dir
from vae_lightning.lit_module import VAELitModule
from vae_lightning.signatures import argument_problems
from vae_lightning.startup import freeze_imported_objects

EmbedSplit = Literal["train", "val", "test"]
ARRAYS_FILE = "embeddings.npz"
DATA_FILE = "data.yaml"
PROJECTOR_DIR = "projector"
# TensorBoard's Projector shows no sprite image larger than this many pixels a side.
MAX_SPRITE_PIXELS = 8192


def check_embed_settings(split: EmbedSplit = "test", batch_size: PositiveInt = 1000) -> None:
    """The signature ``split`` and ``batch_size`` are checked against (see :func:`embed`)."""


@torch.no_grad()
def posterior_means(
    pl_module: VAELitModule, images: Tensor, labels: Tensor, batch_size: int
) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of :meth:`VAE.encode_code` for every image, float32 on the CPU.

    ``images`` are stored pixels (uint8, or floats in [0, 1]); a conditional model is given
    each image's label.
    """
    dtype = next(pl_module.parameters()).dtype
    conditional = pl_module.net.conditional
    mus, logvars = [], []
    for chunk, chunk_labels in zip(
        images.split(batch_size), labels.split(batch_size), strict=True
    ):
        inputs = prepare_images(chunk, fresh_draw=False).to(pl_module.device, dtype)
        mu, logvar = pl_module.net.encode_code(inputs, chunk_labels if conditional else None)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


def sprite_fits(count: int, image_shape: tuple[int, ...]) -> bool:
    """Whether ``count`` thumbnails fit in one sprite TensorBoard will show."""
    return math.ceil(math.sqrt(count)) * max(image_shape[-2:]) <= MAX_SPRITE_PIXELS


def write_projector(
    folder: Path, codes: Tensor, labels: Tensor, names: list[str], thumbnails: Tensor | None
) -> None:
    """A TensorBoard run whose Projector shows ``codes`` with their labels and thumbnails."""
    metadata = [[str(int(label)), names[int(label)]] for label in labels]
    with SummaryWriter(folder) as writer:
        writer.add_embedding(
            codes,
            metadata=metadata,
            metadata_header=["label", "class"],
            label_img=thumbnails,
            tag="posterior_means",
        )


def embed(cfg: DictConfig) -> dict[str, Any]:
    """Encode the split of ``cfg.ckpt_path``'s data; write and return the arrays."""
    ckpt_path = checked_checkpoint(cfg.get("ckpt_path"), "vae-embed")
    settings = {"split": cfg.split, "batch_size": cfg.batch_size}
    if problems := argument_problems(check_embed_settings, settings):
        raise config_error(
            [f"{p.parameter}={p.value!r} is invalid: {p.reason}." for p in problems],
            "Fix the override(s), e.g. vae-embed ckpt_path=... split=test.",
        )
    folder = output_dir(cfg)
    data = data_config(cfg, list(HydraConfig.get().overrides.task))
    datamodule = instantiate(data)
    datamodule.setup("test")
    images, labels = datamodule.splits[cfg.split]
    images, labels = images.cpu(), labels.cpu()
    pl_module = load_module(ckpt_path)
    codes, logvars = posterior_means(pl_module, images, labels, cfg.batch_size)
    names = class_names(data.get("dataset"), int(labels.max()) + 1 if len(labels) else 0)
    arrays = {
        "codes": codes.numpy(),
        "logvars": logvars.numpy(),
        "labels": labels.numpy(),
        "class_names": np.array(names),
    }
    np.savez(folder / ARRAYS_FILE, **arrays)
    (folder / DATA_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
    thumbnails = None
    if cfg.sprites and sprite_fits(len(images), tuple(images.shape)):
        thumbnails = prepare_images(images, fresh_draw=False)
    write_projector(folder / PROJECTOR_DIR, codes, labels, names, thumbnails)
    print(
        f"{len(codes)} {cfg.split} images encoded to {codes.shape[1]}-d posterior means: "
        f"{folder / ARRAYS_FILE}; Projector: tensorboard --logdir {folder / PROJECTOR_DIR}"
    )
    return arrays


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="embed")
@report_user_errors("vae-embed")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    embed(cfg)


if __name__ == "__main__":
    main()
