"""How long each representation metric takes on dSprites-sized inputs.

The codes are synthetic and need no model: ``--num-images`` rows (10,000 by default, the
sample count disentanglement_lib's metrics use) of dSprites' five varying factors (3 shapes,
6 scales, 40 orientations, 32 x 32 positions, drawn uniformly) encoded in ``--latent-dim``
dimensions: the standardised factors plus noise, padded with pure-noise dimensions. Each
metric runs with its default sample counts (docs/metrics.md); the table gives the median and
the range of ``--repeats`` timed runs, after one untimed warm-up run, interleaved so that a
background load falls on every metric alike.

Quiet machine (the figures go to benchmarks/RESULTS.md):
    PYTHONPATH=src python benchmarks/metrics_speed.py --threads 1
Smoke run:
    PYTHONPATH=src python benchmarks/metrics_speed.py --num-images 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vae_lightning.metrics import CODE_METRICS, code_metrics

DSPRITES_FACTOR_SIZES = (3, 6, 40, 32, 32)


def synthetic_codes(num_images: int, latent_dim: int, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    factors = torch.stack(
        [
            torch.randint(size, (num_images,), generator=generator)
            for size in DSPRITES_FACTOR_SIZES
        ],
        dim=1,
    )
    values = factors.double()
    codes = torch.randn(num_images, latent_dim, generator=generator, dtype=torch.float64)
    shared = min(latent_dim, len(DSPRITES_FACTOR_SIZES))
    codes[:, :shared] += ((values - values.mean(0)) / values.std(0))[:, :shared] * 3
    return codes.float(), factors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=10000)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codes, factors = synthetic_codes(args.num_images, args.latent_dim)
    names = list(CODE_METRICS)
    times: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, float] = {}
    for repeat in range(args.repeats + 1):
        for name in names:
            start = time.perf_counter()
            values.update(code_metrics([name], codes, factors))
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    print(
        f"{args.num_images} images, {args.latent_dim} dims, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats"
    )
    print("| metric | median s | min-max s |")
    print("|---|---|---|")
    for name in names:
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"| {name} | {statistics.median(times[name]):.3f} | {spread} |")
    print("values:", ", ".join(f"{key} {value:.3f}" for key, value in values.items()))


if __name__ == "__main__":
    main()
