"""How long generating dSprites takes, against reading back a bit-packed cache of it.

    python benchmarks/dsprites_generation.py --repeats 5 --threads 1

Interleaves the two cases (generation; a cache file read and unpacked), repeats them, and
prints the median and range of each, in seconds. The cache is written once to --cache-dir
(377 MB) and read back from the page cache, its best case. The full set is 3 GB in memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vae_lightning.data.dsprites import NUM_IMAGES, factor_classes, render, sprite_canvases


def generate(count: int) -> torch.Tensor:
    sprite_canvases.cache_clear()  # the canvases count: a fresh process draws them too
    return render(factor_classes(torch.arange(count)))


def read_cache(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(np.load(path), axis=-1)).mul_(255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--count", type=int, default=NUM_IMAGES, help="images (a prefix)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as folder:
        cache = Path(folder) / "dsprites_bits.npy"
        images = generate(args.count)
        np.save(cache, np.packbits(images.numpy() > 0, axis=-1))
        assert torch.equal(read_cache(cache), images)
        del images
        times: dict[str, list[float]] = {"generate": [], "read cache": []}
        for _ in range(args.repeats):
            for name, run in (
                ("generate", lambda: generate(args.count)),
                ("read cache", lambda: read_cache(cache)),
            ):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    print(f"{args.count} images, {args.threads} threads, {args.repeats} repeats (seconds)")
    for name, values in times.items():
        print(
            f"{name:>10}: median {statistics.median(values):.2f}  "
            f"range {min(values):.2f}-{max(values):.2f}"
        )


if __name__ == "__main__":
    main()
