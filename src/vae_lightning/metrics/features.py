"""Feature extractors for the sample-quality metrics (FID, KID, precision/recall).

Inception's weights cannot be fetched offline and Inception never saw MNIST-like images, so
the default extractor is a *domain classifier*: a small conv net trained by this project on
the dataset's own labels (training split), whose penultimate activations are the features.
It is trained once per (dataset, image shape, pixel kind, settings) and cached on disk with
its test accuracy, which tells users how good the features are. ``inception`` uses
torchmetrics' Inception wrapper when torch-fidelity and its weights are present locally.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import Tensor, nn

from vae_lightning.errors import UserError
from vae_lightning.seeding import forked_rng

# Bump when DomainClassifier's layers or its training loop change: old caches become stale.
ARCHITECTURE_VERSION = 1


class FeatureExtractorError(UserError, RuntimeError):
    """A feature extractor that cannot be built here; the message says what to do."""


@dataclass(frozen=True)
class ClassifierSettings:
    """How the domain classifier is built and trained (``eval.classifier.*``)."""

    width: PositiveInt = 32  # channels of the first conv layer (doubled twice)
    feature_dim: PositiveInt = 128  # penultimate layer: the features
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 2e-3
    seed: int = 0


class DomainClassifier(nn.Module):
    """Three strided 3x3 convs, a linear feature layer and a linear class head.

    :meth:`features` returns the (ReLU) activations of the feature layer, (B, feature_dim).
    The adaptive pooling makes it work for any image size (28, 32, 64 px).
    """

    def __init__(self, image_channels: int, num_classes: int, width: int, feature_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(image_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * width * 16, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_features = feature_dim  # read by torchmetrics for custom extractors

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.trunk(x))


def to_pixels(images: Tensor, binary: bool, generator: torch.Generator | None = None) -> Tensor:
    """uint8 or [0, 1] images -> float [0, 1]; ``binary``: a Bernoulli draw of each pixel
    (images already 0/1 stay as they are)."""
    pixels = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return torch.bernoulli(pixels, generator=generator) if binary else pixels


def cache_key(
    dataset: str, image_shape: tuple[int, ...], binary: bool, settings: ClassifierSettings
) -> str:
    """The cache file's name: dataset, image shape, pixel kind and a hash of the settings."""
    spec = {"version": ARCHITECTURE_VERSION, "binary": binary, **asdict(settings)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    shape = "x".join(str(size) for size in image_shape)
    return f"{dataset}-{shape}-{'binary' if binary else 'gray'}-{digest}"


@torch.no_grad()
def accuracy(model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


def train_domain_classifier(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    binary: bool,
    settings: ClassifierSettings,
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train on ``train`` (images, labels) with Adam and cross-entropy; deterministic given
    ``settings.seed`` (own generators for the initialisation, the shuffle and the binary
    draws; the global RNG is left untouched). Returns the model and what was measured."""
    images, labels = train
    start = time.perf_counter()
    with forked_rng():
        torch.manual_seed(settings.seed)
        model = DomainClassifier(
            images.shape[1], num_classes, settings.width, settings.feature_dim
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for begin in range(0, len(images), settings.batch_size):
            batch = order[begin : begin + settings.batch_size]
            x = to_pixels(images[batch], binary, generator)  # fresh binary draws each epoch
            loss = nn.functional.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    test_pixels = to_pixels(test[0], binary, torch.Generator().manual_seed(settings.seed))
    test_accuracy = accuracy(model, test_pixels, test[1], 1000)
    model.eval()
    record = {
        "test_accuracy": test_accuracy,
        "train_seconds": round(seconds, 2),
        "train_images": len(images),
        "settings": asdict(settings),
    }
    return model, record


def domain_classifier(
    cache_dir: str | Path,
    dataset: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    binary: bool,
    settings: ClassifierSettings,
) -> tuple[DomainClassifier, dict[str, Any]]:
    """The cached domain classifier for this dataset and settings, trained (and cached) on
    first use. The record says where the file is, its test accuracy and whether it was
    trained by this call."""
    image_shape = tuple(train[0].shape[1:])
    path = Path(cache_dir) / f"{cache_key(dataset, image_shape, binary, settings)}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = DomainClassifier(image_shape[0], num_classes, settings.width, settings.feature_dim)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return model, {**saved["record"], "path": str(path), "trained_now": False}
    model, record = train_domain_classifier(train, test, num_classes, binary, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "record": record}, partial)
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return model, {**record, "path": str(path), "trained_now": True}


def inception_extractor() -> nn.Module:
    """torchmetrics' Inception-v3 pool features (2048), when torch-fidelity and the weights are
    installed; otherwise a FeatureExtractorError saying what to install and where."""
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise FeatureExtractorError(
            "eval.features=inception needs torch-fidelity (pip install torch-fidelity) and its "
            "Inception-v3 weights file weights-inception-2015-12-05-6726825d.pth in torch's hub "
            f"checkpoint folder ({Path(torch.hub.get_dir()) / 'checkpoints'}), which it "
            "downloads on first use; offline, copy that file there from a machine with "
            "internet access. Or use eval.features=domain (the default), a classifier trained "
            "here on the dataset's labels."
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as err:  # torch-fidelity's download failed: no weights file here
        raise FeatureExtractorError(
            "eval.features=inception could not load the Inception-v3 weights "
            f"({type(err).__name__}: {err}). Place weights-inception-2015-12-05-6726825d.pth "
            f"in {Path(torch.hub.get_dir()) / 'checkpoints'} (torch-fidelity's release file), "
            "or use eval.features=domain (the default)."
        ) from err


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    """Features of float [0, 1] images (N, C, H, W), batch by batch, as float64 on the CPU.

    The domain classifier takes the images as they are; Inception takes uint8 RGB.
    """
    extractor = extractor.to(device).eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if isinstance(extractor, DomainClassifier):
            chunks.append(extractor.features(x).double().cpu())
        else:
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            chunks.append(extractor((x * 255).round().to(torch.uint8)).double().cpu())
    return torch.cat(chunks)
