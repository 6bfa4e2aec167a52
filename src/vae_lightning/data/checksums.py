"""MD5 checks of the MNIST-family ``.gz`` files against their published checksums.

Structural checks (idx.py) already catch truncated and corrupt files. Checksums add two
things: a file where vae-train downloads (torchvision's ``<root>/MNIST/raw/`` layout) must be
exactly the published one, so a download cut short or garbled by a proxy never passes; and
a file that is *another* dataset's (Fashion-MNIST files in an MNIST folder: both use the
same file names) is recognised anywhere. Other files under the official names (your own IDX
files, a subset) are left to the structural checks. Uncompressed files have no published
checksum.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from vae_lightning.data.idx import DataFileError

DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
# Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1, which fills
# /usr/share/datasets/fashion-mnist) re-compresses the original files: same images, other
# .gz bytes. Measured with md5sum on the installed package.
DEBIAN_FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
    "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
    "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
    "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
}


@functools.cache
def known_md5() -> dict[str, dict[str, frozenset[str]]]:
    """dataset -> file name -> accepted MD5s: torchvision's published list (the files its
    download fetches and verifies), plus Debian's re-compressed Fashion-MNIST."""
    from torchvision import datasets

    known: dict[str, dict[str, set[str]]] = {}
    for dataset, cls in (("mnist", datasets.MNIST), ("fashion_mnist", datasets.FashionMNIST)):
        known[dataset] = {name: {md5} for name, md5 in cls.resources}
    for name, md5 in DEBIAN_FASHION_MNIST_MD5.items():
        known["fashion_mnist"][name].add(md5)
    return {
        ds: {name: frozenset(sums) for name, sums in files.items()} for ds, files in known.items()
    }


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, dataset: str, strict: bool) -> None:
    """Raise DataFileError if ``path`` is another dataset's file, or (``strict``) if it is not
    the published file of ``dataset``. Files without a published checksum pass."""
    accepted = known_md5().get(dataset, {}).get(path.name)
    if accepted is None:
        return
    digest = md5_of(path)
    if digest in accepted:
        return
    for other, files in known_md5().items():
        if other != dataset and digest in files.get(path.name, ()):
            raise DataFileError(
                f"{path} is {DATASET_TITLES[other]}'s {path.name}, not "
                f"{DATASET_TITLES[dataset]}'s (MD5 {digest}). Point data.root at the "
                f"{DATASET_TITLES[dataset]} files, or pick data={other} if that is the "
                "dataset you meant."
            )
    if strict:
        raise DataFileError(
            f"{path} is not the published {DATASET_TITLES[dataset]} file: its MD5 is {digest}, "
            f"expected {' or '.join(sorted(accepted))}. The download was interrupted or "
            f"corrupted. Delete it (rm '{path}') and run again to download it again; if it is "
            "your own file under this name, set data.verify_checksums=false."
        )
