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
from vae_lightning.data.registry import DATASETS, dataset_info


@functools.cache
def known_md5() -> dict[str, dict[str, frozenset[str]]]:
    """dataset -> file name -> accepted MD5s, for every registered IDX dataset: torchvision's
    published list (the files its download fetches and verifies) plus the registry's extras
    (Debian's re-compressed Fashion-MNIST)."""
    from torchvision import datasets

    known: dict[str, dict[str, frozenset[str]]] = {}
    for info in DATASETS.values():
        if info.idx is None:
            continue
        accepted = {
            name: {md5} for name, md5 in getattr(datasets, info.idx.torchvision_class).resources
        }
        for name, md5 in info.idx.extra_md5.items():
            accepted[name].add(md5)
        known[info.name] = {name: frozenset(sums) for name, sums in accepted.items()}
    return known


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
    title = dataset_info(dataset).title
    digest = md5_of(path)
    if digest in accepted:
        return
    for other, files in known_md5().items():
        if other != dataset and digest in files.get(path.name, ()):
            raise DataFileError(
                f"{path} is {dataset_info(other).title}'s {path.name}, not "
                f"{title}'s (MD5 {digest}). Point data.root at the "
                f"{title} files, or pick data={other} if that is the "
                "dataset you meant."
            )
    if strict:
        raise DataFileError(
            f"{path} is not the published {title} file: its MD5 is {digest}, "
            f"expected {' or '.join(sorted(accepted))}. The download was interrupted or "
            f"corrupted. Delete it (rm '{path}') and run again to download it again; if it is "
            "your own file under this name, set data.verify_checksums=false."
        )
