"""Evaluation speed: vae-eval's IWAE NLL against the float32 matmul bound of the same FLOPs.

Issue #16's target: ``vae-eval eval.iwae_k=5000`` of the default MLP (784-400-20, Bernoulli) on
the 10k test images within 1.2x the time bare float32 matrix products of the same FLOPs take,
measured on the same machine in the same run.

The FLOPs counted, for N images and k importance samples (MLP checkpoints only):
  - the decoder's matrix products for N (k + 1) codes: the k IWAE samples and the test step's
    one ELBO sample per image; for 20 -> 400 -> 784, (rows, 20) @ (20, 400) and
    (rows, 400) @ (400, 784): 2 (20 400 + 400 784) = 643,200 FLOP per code;
  - the encoder's once per image: (N, 784) @ (784, 400) and (N, 400) @ (400, 40).
Biases, activations, the likelihood, the draws and the log-densities are not counted: they are
what the 1.2 leaves room for. The bound is the wall time of bare ``torch.mm`` of exactly those
shapes into preallocated float32 outputs, ``BOUND_BLOCK_ROWS`` rows at a time, with torch's
default threads (as vae-eval runs); ``--bound-rows`` times fewer decoder rows and scales.

The eval is ``vae-eval`` itself, one subprocess per run: its ``seconds`` in eval.json (the test
loop: ELBO terms, IWAE, active units; not imports or loading) with ``eval.iwae_k=k``, and the
same with ``eval.iwae_k=0`` (everything but the IWAE). Repeats interleave bound, eval k and
eval 0; each repeat gives the ratios eval/bound, and the medians and spreads are printed.

Small setting (about 1 min on 2 cores; trains a 1-epoch checkpoint first if none is given):
    PYTHONPATH=src python benchmarks/eval_speed.py --images 500 --k 500 --repeats 5
The issue's setting (about 25 min on 2 cores with 3 repeats):
    PYTHONPATH=src python benchmarks/eval_speed.py --ckpt <run>/checkpoints/last.ckpt \\
        --images 10000 --k 5000 --repeats 3 --bound-rows 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOUND_BLOCK_ROWS = 4096
EVAL_BATCH = 100  # conf/eval.yaml's eval.batch_size


def project_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), *sys.path])}


def train_checkpoint(run_dir: Path) -> Path:
    """A cheap checkpoint of the default MLP: one epoch of Fashion-MNIST (about 30 s)."""
    command = [
        sys.executable,
        "-m",
        "vae_lightning.train",
        "data=fashion_mnist",
        "trainer.max_epochs=1",
        "test_iwae_k=0",
        f"hydra.run.dir={run_dir}",
    ]
    subprocess.run(command, check=True, capture_output=True, env=project_env())
    return run_dir / "checkpoints" / "last.ckpt"


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of each Linear layer, in order; refuses anything but an MLP."""
    if any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in module.modules()):
        raise SystemExit("eval_speed.py counts the FLOPs of MLP checkpoints only.")
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def bare_matmul_seconds(shapes: list[tuple[int, int]], rows: int) -> float:
    """Wall time of float32 torch.mm of ``rows`` rows through ``shapes``, in blocks."""
    if rows == 0:
        return 0.0
    block = min(rows, BOUND_BLOCK_ROWS)
    inputs = [torch.randn(block, fan_in) for fan_in, _ in shapes]
    weights = [torch.randn(fan_in, fan_out) for fan_in, fan_out in shapes]
    outputs = [torch.empty(block, fan_out) for _, fan_out in shapes]
    # Warm-up: MKL's first call of a shape allocates its buffers.
    for a, w, o in zip(inputs, weights, outputs, strict=True):
        torch.mm(a, w, out=o)
    start = time.perf_counter()
    done = 0
    while done < rows:
        n = min(block, rows - done)
        for a, w, o in zip(inputs, weights, outputs, strict=True):
            torch.mm(a[:n], w, out=o[:n])
        done += n
    return time.perf_counter() - start


def bound_seconds(ckpt: Path, images: int, k: int, bound_rows: int | None) -> dict[str, float]:
    from vae_lightning.lit_module import VAELitModule

    net = VAELitModule.load_from_checkpoint(ckpt, map_location="cpu").net
    decoder, encoder = linear_shapes(net.decoder), linear_shapes(net.encoder)
    decoder_rows = images * (k + 1)
    timed_rows = min(decoder_rows, bound_rows or decoder_rows)
    decoder_time = bare_matmul_seconds(decoder, timed_rows) * decoder_rows / timed_rows
    flop_per_code = sum(2 * a * b for a, b in decoder)
    flop = decoder_rows * flop_per_code + images * sum(2 * a * b for a, b in encoder)
    seconds = decoder_time + bare_matmul_seconds(encoder, images)
    return {"seconds": seconds, "gflop": flop / 1e9, "gflop_per_s": flop / seconds / 1e9}


def eval_seconds(ckpt: Path, images: int, k: int, workdir: Path) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    command = [
        sys.executable,
        "-m",
        "vae_lightning.evaluate",
        f"ckpt_path={ckpt}",
        f"eval.iwae_k={k}",
        f"eval.limit_batches={images // EVAL_BATCH}",
        f"eval.batch_size={EVAL_BATCH}",
        "eval.progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=project_env())
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"vae-eval failed:\n{proc.stderr[-3000:]}")
    result = json.loads((run_dir / "eval.json").read_text())
    return {
        "seconds": float(result["seconds"]),
        "wall": wall,
        "nll": float(result.get("test/nll_iwae", "nan")),
    }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, help="an MLP checkpoint (default: train one)")
    parser.add_argument("--images", type=int, default=500, help="test images (x100)")
    parser.add_argument("--k", type=int, default=500, help="importance samples per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bound-rows", type=int, help="decoder rows the bound times (scaled)")
    args = parser.parse_args()
    if args.images % EVAL_BATCH:
        raise SystemExit(f"--images must be a multiple of the eval batch, {EVAL_BATCH}.")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = args.ckpt or train_checkpoint(workdir / "train")
        print(f"checkpoint {ckpt}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{args.images} images, k={args.k}")
        rows: dict[str, list[float]] = {
            "bound s": [],
            "eval s": [],
            "eval k=0 s": [],
            "eval/bound": [],
            "(eval - eval k=0)/bound": [],
            "vae-eval wall s": [],
        }
        for repeat in range(args.repeats):
            bound = bound_seconds(ckpt, args.images, args.k, args.bound_rows)
            full = eval_seconds(ckpt, args.images, args.k, workdir)
            base = eval_seconds(ckpt, args.images, 0, workdir)
            rows["bound s"].append(bound["seconds"])
            rows["eval s"].append(full["seconds"])
            rows["eval k=0 s"].append(base["seconds"])
            rows["eval/bound"].append(full["seconds"] / bound["seconds"])
            rows["(eval - eval k=0)/bound"].append(
                (full["seconds"] - base["seconds"]) / bound["seconds"]
            )
            rows["vae-eval wall s"].append(full["wall"])
            print(
                f"repeat {repeat}: bound {bound['seconds']:.2f} s ({bound['gflop']:.0f} GFLOP, "
                f"{bound['gflop_per_s']:.0f} GFLOP/s), eval {full['seconds']:.2f} s, "
                f"eval k=0 {base['seconds']:.2f} s, NLL {full['nll']:.4f}",
                flush=True,
            )
        print("\nmedian [min-max] over repeats")
        for name, values in rows.items():
            print(f"  {name:26s} {summary(values)}")


if __name__ == "__main__":
    main()
