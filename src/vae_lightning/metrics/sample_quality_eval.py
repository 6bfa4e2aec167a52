"""Sample quality of a trained VAE: its prior samples against the test images, on features.

Which images are compared (docs/sample-quality.md): when the data are binarized
(``data.binarize`` dynamic or static; the evaluation splits then hold one fixed 0/1 draw) each
generated image is a *sample* of p(x|z), a Bernoulli draw of every pixel with the decoder's
mean as probability, so both sets are binary images of the distribution the model was trained
to match. On grey-level data (``binarize=none``) the generated image is the decoder's mean
E[x|z] clamped to [0, 1], the usual picture of a VAE sample (a Gaussian draw would add pixel
noise that no test image has).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import PositiveInt
from torch import Tensor

from vae_lightning.metrics.features import (
    ClassifierSettings,
    domain_classifier,
    extract_features,
    inception_extractor,
    to_pixels,
)
from vae_lightning.metrics.sample_quality import (
    frechet_distance,
    kernel_distance,
    precision_recall,
)
from vae_lightning.seeding import EVAL_SEED, forked_rng

# Metric name in eval.metrics -> the keys it writes (after "<split>/").
SAMPLE_QUALITY_METRICS = {
    "fid": ("fid",),
    "kid": ("kid", "kid_std"),
    "precision_recall": ("precision", "recall"),
}
Features = Literal["domain", "inception"]


@torch.no_grad()
def model_images(
    model: Any,
    num_samples: int,
    binary: bool,
    labels: Tensor | None,
    batch_size: int,
    device: torch.device,
    seed: int = EVAL_SEED,
) -> Tensor:
    """``num_samples`` images of the model (a VAELitModule: ``net.sample_prior`` and
    ``decode_mean``) as float [0, 1] on the CPU: binary draws or mean images."""
    model = model.to(device).eval()
    generator = torch.Generator(device).manual_seed(seed)
    images = []
    with forked_rng(device):
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            code = model.net.sample_prior(count, generator).to(device)
            batch_labels = None if labels is None else labels[start : start + count].to(device)
            mean = model.decode_mean(code, batch_labels).float().clamp(0.0, 1.0)
            images.append((torch.bernoulli(mean, generator=generator) if binary else mean).cpu())
    return torch.cat(images)


def split_pixels(datamodule: Any, split: str) -> tuple[Tensor, Tensor]:
    """A split's images as float [0, 1] and its labels, on the CPU."""
    if not datamodule.splits:
        datamodule.setup("test")
    images, labels = datamodule.splits[split]
    return to_pixels(images.cpu(), binary=False), labels.cpu()


def sample_quality(
    model: Any,
    datamodule: Any,
    names: Iterable[str],
    split: str = "test",
    num_samples: PositiveInt = 10000,
    features: Features = "domain",
    nearest_k: PositiveInt = 3,
    kid_subsets: PositiveInt = 100,
    kid_subset_size: PositiveInt = 1000,
    classifier: dict[str, Any] | None = None,
    feature_cache_dir: str = "data/feature_extractors",
    batch_size: PositiveInt = 1000,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """The named sample-quality metrics (keys of :data:`SAMPLE_QUALITY_METRICS`) of ``model``'s
    prior samples against ``split``'s images, as ``<split>/<key>``, plus a ``sample_quality``
    record of how they were got (the feature extractor and its test accuracy included)."""
    names = [name for name in names if name in SAMPLE_QUALITY_METRICS]
    start = time.perf_counter()
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    binary = getattr(datamodule, "binarize", "none") != "none"
    real, real_labels = split_pixels(datamodule, split)
    record: dict[str, Any] = {
        "features": features,
        "num_samples": num_samples,
        "num_real": len(real),
        "generated_images": "bernoulli_samples" if binary else "mean_images",
    }
    if features == "domain":
        settings = ClassifierSettings(**(classifier or {}))
        train = datamodule.splits["train"]
        info = getattr(datamodule, "info", None)
        num_classes = len(info.class_names) if info else int(train[1].max()) + 1
        extractor, extractor_record = domain_classifier(
            feature_cache_dir,
            datamodule.dataset,
            (train[0].cpu(), train[1].cpu()),
            (real, real_labels),
            num_classes,
            binary,
            settings,
        )
        record["feature_extractor"] = extractor_record
    else:
        extractor = inception_extractor()
        record["feature_extractor"] = {"name": "inception-v3-compat (torch-fidelity)"}

    labels = None
    if getattr(model.net, "conditional", False):  # the test split's class frequencies
        labels = real_labels.repeat(num_samples // len(real_labels) + 1)[:num_samples]
    fake = model_images(model, num_samples, binary, labels, batch_size, device)
    real_features = extract_features(extractor, real, batch_size, device)
    fake_features = extract_features(extractor, fake, batch_size, device)

    results: dict[str, Any] = {}
    if "fid" in names:
        results[f"{split}/fid"] = frechet_distance(real_features, fake_features)
    if "kid" in names:
        kid = kernel_distance(
            real_features, fake_features, kid_subsets, kid_subset_size, seed=EVAL_SEED
        )
        results[f"{split}/kid"], results[f"{split}/kid_std"] = kid.mean, kid.std
        record["kid_subsets"], record["kid_subset_size"] = kid.subsets, kid.subset_size
    if "precision_recall" in names:
        pr = precision_recall(real_features.float(), fake_features.float(), nearest_k)
        results[f"{split}/precision"], results[f"{split}/recall"] = pr.precision, pr.recall
        record["nearest_k"] = nearest_k
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["feature_cache_dir"] = str(Path(feature_cache_dir))
    return {**results, "sample_quality": record}
