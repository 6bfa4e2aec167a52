"""Class names of the MNIST-family datasets, for legends and the Projector's metadata."""

from __future__ import annotations

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}


def class_names(dataset: str | None, num_classes: int = 10) -> list[str]:
    """Names of the classes of ``dataset``; the label numbers for an unknown dataset."""
    return CLASS_NAMES.get(dataset or "", [str(label) for label in range(num_classes)])
