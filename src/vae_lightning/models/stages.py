"""Spatial sizes through stride-2 stages, shared by the encoders and the decoders mirroring them.

A 3x3 convolution with stride 2 and padding 1 (and a 1x1 one with stride 2) takes a side of
n pixels to ceil(n / 2): 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4. The decoders walk the same
sizes back up, so they produce exactly the image's height and width (4 -> 7 -> 14 -> 28).
"""

from __future__ import annotations

from collections.abc import Sequence

Size = tuple[int, int]  # (height, width)


def stage_sizes(image_shape: Sequence[int], halvings: int) -> list[Size]:
    """(H, W) of the image, then after each of ``halvings`` stride-2 stages."""
    _, height, width = image_shape
    sizes = [(height, width)]
    for _ in range(halvings):
        height, width = -(-height // 2), -(-width // 2)
        sizes.append((height, width))
    return sizes


def transposed_output_padding(smaller: Size, larger: Size) -> Size:
    """The ``output_padding`` that makes a 3x3 stride-2 transposed convolution with padding 1
    go from ``smaller`` back to ``larger``: it gives 2n - 1 pixels plus the padding, so 0 for
    an odd side (7 <- 4) and 1 for an even one (14 <- 7)."""
    return tuple(big - (2 * small - 1) for small, big in zip(smaller, larger, strict=True))


def check_image_fits(image_shape: Sequence[int], halvings: int, model: str) -> None:
    """ValueError unless every one of ``halvings`` stride-2 stages has at least two pixels a
    side to halve: a smaller image would leave the deepest stages at 1x1, all padding."""
    smallest = 2**halvings
    _, height, width = image_shape
    if min(height, width) < smallest:
        raise ValueError(
            f"{model} halves the image {halvings} times, so it needs images of at least "
            f"{smallest}x{smallest} pixels, but image_shape={list(image_shape)} is "
            f"{height}x{width}. Use fewer stages (a shorter channels list) or larger images."
        )
