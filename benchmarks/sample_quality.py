"""Time the sample-quality metrics at vae-eval's default size (docs/sample-quality.md).

    python benchmarks/sample_quality.py                     # 10k vs 10k, 128-dim features
    python benchmarks/sample_quality.py --num 2000 --dim 64 # a smaller check
    python benchmarks/sample_quality.py --fashion-mnist /usr/share/datasets/fashion-mnist

Prints seconds for: features of ``--num`` 28x28 images by the domain classifier, FID, KID
(100 subsets of 1000) and precision/recall (k=3); with ``--fashion-mnist`` also the domain
classifier's training with the default settings on the full training split, and its test
accuracy (that run trains in a temporary cache folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vae_lightning.metrics.features import (
    ClassifierSettings,
    DomainClassifier,
    domain_classifier,
    extract_features,
)
from vae_lightning.metrics.sample_quality import (
    frechet_distance,
    kernel_distance,
    precision_recall,
)


def timed(label: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    print(f"{label:<40} {time.perf_counter() - start:8.2f} s   {result}")
    return result


def fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from vae_lightning.data.idx import read_image_label_pair

    prefix = "train" if split == "train" else "t10k"
    return read_image_label_pair(
        root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz", (28, 28)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=10000, help="images per set")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension")
    parser.add_argument("--fashion-mnist", type=Path, help="folder of the Fashion-MNIST .gz")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.num} vs {args.num} images, {args.dim}-dim features, torch on {device}")

    extractor = DomainClassifier(1, 10, 32, args.dim)
    images = torch.rand(args.num, 1, 28, 28)
    timed(
        "domain-classifier features",
        lambda: tuple(extract_features(extractor, images, 1000, device).shape),
    )
    real = torch.randn(args.num, args.dim, dtype=torch.float64)
    fake = torch.randn(args.num, args.dim, dtype=torch.float64) * 1.1 + 0.1
    timed("FID", lambda: round(frechet_distance(real, fake), 4))
    timed("KID (100 subsets of 1000)", lambda: kernel_distance(real, fake))
    timed("precision/recall (k=3)", lambda: precision_recall(real.float(), fake.float(), 3))

    if args.fashion_mnist:
        train = fashion_mnist(args.fashion_mnist, "train")
        test = fashion_mnist(args.fashion_mnist, "test")
        with tempfile.TemporaryDirectory() as cache:
            _, record = timed(
                "domain classifier training (defaults)",
                lambda: domain_classifier(
                    cache, "fashion_mnist", train, test, 10, False, ClassifierSettings()
                ),
            )
        print(f"test accuracy {record['test_accuracy']:.4f} on {len(test[0])} test images")


if __name__ == "__main__":
    main()
