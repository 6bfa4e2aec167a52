"""data=image_folder: how long the first run's decode takes, and how fast later runs start.

Exports Fashion-MNIST (Debian's copy, /usr/share/datasets/fashion-mnist) as a folder of PNG
files laid out as data.split=folders reads it: the 55 000 training and 5 000 validation images
of data=fashion_mnist's own split (data.val_size=5000, data.split_seed=42) and the 10 000 test
images, as <folder>/{train,val,test}/NNNNN.png, numbered in the split's order (so the image
folder's splits hold the very tensors of data=fashion_mnist, in the same order; see
tests/test_image_folder_real.py). Then, for each --workers value, into a fresh cache folder:

  scan    listing and stat-ing the files (the fingerprint's input), s;
  build   the first run's decode into the cache, s and images/s;
  load    a later run's start: scan, fingerprint, cache read, split (ImageFolderDataModule
          prepare_data + setup), s.

Full run (quiet machine; the export alone takes a minute or two):
    PYTHONPATH=src python benchmarks/image_folder.py --markdown
Smoke run on a small folder:
    PYTHONPATH=src python benchmarks/image_folder.py --limit 600 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test")


def export_fashion_mnist(folder: Path, limit: int | None = None) -> dict[str, int]:
    """Write data=fashion_mnist's train/val/test splits as PNGs under folder (see above);
    ``limit`` keeps the first that many images of each split. Returns the counts."""
    from vae_lightning.data import MNISTDataModule

    source = MNISTDataModule(
        dataset="fashion_mnist", root=str(FASHION_MNIST), download=False, binarize="none"
    )
    counts = {}
    for split, (images, _) in source.read_splits().items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        chosen = images[:limit].numpy()
        for index, pixels in enumerate(chosen):
            Image.fromarray(pixels[0]).save(folder / split / f"{index:05d}.png")
        counts[split] = len(chosen)
    return counts


def data_module(folder: Path, cache_dir: Path, workers: int):
    from vae_lightning.data import ImageFolderDataModule

    return ImageFolderDataModule(
        root=str(folder),
        image_size=28,
        channels=1,
        image_shape=(1, 28, 28),
        split="folders",
        cache_dir=str(cache_dir),
        decode_workers=workers,
        binarize="none",
    )


def measure(folder: Path, workers: int) -> dict[str, float]:
    from vae_lightning.data.decode_cache import decoded_images
    from vae_lightning.data.image_files import DecodeSettings, scan_images

    cache_dir = Path(tempfile.mkdtemp(prefix="vae-cache-bench-"))
    try:
        start = time.perf_counter()
        files = scan_images(folder)
        scan = time.perf_counter() - start
        start = time.perf_counter()
        decoded_images(folder, files, DecodeSettings(28, 1), cache_dir=cache_dir, workers=workers)
        build = time.perf_counter() - start
        start = time.perf_counter()
        dm = data_module(folder, cache_dir, workers)
        dm.prepare_data()
        dm.setup("fit")
        load = time.perf_counter() - start
        assert not dm.decoded.mapped
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "workers": workers,
        "images": len(files),
        "scan_s": round(scan, 3),
        "build_s": round(build, 2),
        "images_per_s": round(len(files) / build),
        "load_s": round(load, 3),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| workers | images | scan s | build s | images/s | later start s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['images']} | {row['scan_s']} | {row['build_s']} | "
            f"{row['images_per_s']} | {row['load_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="reuse (or create) the export here")
    parser.add_argument("--limit", type=int, help="export at most this many images per split")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 1])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    if not FASHION_MNIST.is_dir():
        raise SystemExit(f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    temporary = args.folder is None
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fashion-png-"))
    try:
        if not (folder / "train").is_dir():
            start = time.perf_counter()
            counts = export_fashion_mnist(folder, args.limit)
            print(f"exported {counts} to {folder} in {time.perf_counter() - start:.1f} s")
        rows = [measure(folder, workers) for workers in dict.fromkeys(args.workers)]
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, Pillow {Image.__version__}, numpy "
        f"{np.__version__}"
    )
    print(markdown(rows) if args.markdown else "\n".join(json.dumps(row) for row in rows))


if __name__ == "__main__":
    main()
