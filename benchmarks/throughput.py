"""Training throughput: how much does the framework cost over a bare PyTorch loop?

Three ways to train the same VAE (the network ``model=<name>`` builds from
conf/model/<name>.yaml: mlp, conv or resnet) on Fashion-MNIST (55 000 training images), or
with ``--data cifar-shaped`` on random uint8 images of CIFAR-10's shape (3x32x32, 50 000 by
default, ``--num-images``; see random_images.py), dynamically binarized, the default config's
optimizer (fused Adam, lr 1e-3), no gradient clipping, as in the default config. Path a uses
the project's batch gather (index_select), binarization and optimizer kernels, so a and b
differ by the framework alone; ``--naive-pure-loop`` gives path a ``images[index]``,
torch.bernoulli and torch.optim.Adam's default kernels, as a loop written by hand would have:

  a  a minimal pure PyTorch loop over a preloaded uint8 tensor (the floor);
  b  ``vae_lightning.train.train(cfg)`` with the default config: Lightning, every default
     callback, TensorBoard logging and the progress bar on; validation and test off
     (``data.loader=tensor``; on a GPU the data then lives in GPU memory);
  c  the same as b with ``data.loader=torch``: a torchvision-style per-sample Dataset and a
     DataLoader (``--workers`` sets its ``num_workers``, default 0 as in the config).

Each case runs in its own subprocess (peak RSS and compile caches are its own) with the same
glibc malloc thresholds (``--malloc``, see FIXED_MALLOC). s/epoch is the median wall time
over the epochs after the first (which pays for warm-up: compile, cudnn autotuning); CPU
s/epoch is the process's CPU time, a steadier figure on a shared machine when run with
``--threads 1``. Ratios b/a and c/b are of s/epoch: 1.05 means 5 % slower. On a GPU, b and c
use ``trainer=gpu`` with ``trainer.precision`` from ``--precision`` (32-true unless given;
pass bf16-mixed to measure trainer=gpu as shipped) and a uses the matching autocast.

Full run (quiet machine; about 15 min on 2 CPU cores):
    PYTHONPATH=src python benchmarks/throughput.py --markdown
Smoke run:
    PYTHONPATH=src python benchmarks/throughput.py --models mlp --batch-sizes 128 \\
        --epochs 2 --limit-batches 5
Paths a and b in one process, alternating blocks of 43 steps (interleaved.py: the VM's drift
between processes, larger than the framework's cost, then falls on both; 5 processes):
    PYTHONPATH=src python benchmarks/throughput.py --models mlp conv --batch-sizes 128 \\
        --epochs 3 --repeats 5 --interleaved 43 --markdown
Each model family's epoch next to the standard VAE's (path b, the MLP; issue: a family costs
what its maths costs):
    PYTHONPATH=src python benchmarks/throughput.py --families --batch-sizes 128 --markdown
conv and resnet epochs on CIFAR-shaped data, pure loop (a) against vae-train (b):
    PYTHONPATH=src python benchmarks/throughput.py --data cifar-shaped \\
        --models conv resnet --paths a b --batch-sizes 128 --markdown
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATA_SHAPES = {"fashion-mnist": (1, 28, 28), "cifar-shaped": (3, 32, 32)}
VAL_SIZE = 5000  # data.val_size of the default config: the training set has 60 000 - 5000
RESULT_PREFIX = "THROUGHPUT_RESULT "
# glibc malloc returns big freed blocks to the OS and maps them afresh (page faults, zeroing)
# unless its thresholds have grown; vae-train grows them by accident (it frees 30 MB+ tensors
# in setup), a bare loop does not, which alone made the pure loop ~10 % slower on the conv
# model. The same fixed thresholds for every case make the comparison about the loops.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**28)}
PATHS = {
    "a": "pure PyTorch loop",
    "b": "vae-train (Lightning, loader=tensor)",
    "c": "vae-train, loader=torch (Dataset+DataLoader)",
}


# ----------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch.")
    return torch.device(name)


def read_train_images(root: Path) -> torch.Tensor:
    """The training images as uint8 (N, 1, 28, 28), read without the project's data module."""
    with gzip.open(root / "train-images-idx3-ubyte.gz") as handle:
        raw = handle.read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(count, 1, rows, cols)


def training_images(args: argparse.Namespace) -> torch.Tensor:
    """The pure loop's training set, uint8: as many images as vae-train trains on."""
    if args.data == "cifar-shaped":
        from random_images import random_uint8_images  # benchmarks/ is on sys.path

        return random_uint8_images(args.num_images, DATA_SHAPES[args.data], args.seed)
    return read_train_images(args.data_root)[: -args.val_size]


def build_net(model: str, image_shape: tuple[int, ...]) -> torch.nn.Module:
    """The network ``model=<model>`` builds, from conf/model/<model>.yaml, for image_shape
    (one decoder output per channel: the default Bernoulli likelihood's)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / f"{model}.yaml")
    config.net.image_shape = list(image_shape)
    return instantiate(config.net, latent_dim=config.latent_dim)


# ------------------------------------------------------------------------------ path a
def pure_loop_optimizer(naive: bool, model: torch.nn.Module) -> torch.optim.Optimizer:
    """conf/optimizer/adam.yaml, as vae-train builds it (fused), so that paths a and b differ
    by the framework alone; naive: ``torch.optim.Adam(lr=1e-3)``, torch's default kernels."""
    if naive:
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(PROJECT_ROOT / "conf" / "optimizer" / "adam.yaml")
    return instantiate(config, params=model.parameters())


def pure_loop_step(
    args: argparse.Namespace, device: torch.device, images: torch.Tensor
) -> Callable[[torch.Tensor], None]:
    """Path a's training step, with its own network and optimizer: step(index) trains on
    ``images[index]``."""
    from vae_lightning.data.datamodule import prepare_images
    from vae_lightning.models.likelihoods import Bernoulli
    from vae_lightning.models.objectives import ELBO

    model = build_net(args.model, DATA_SHAPES[args.data]).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()
    optimizer = pure_loop_optimizer(args.naive_pure_loop, model)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")
    objective, likelihood = ELBO(), Bernoulli()  # the maths VAELitModule trains by default

    def train_step(index: torch.Tensor) -> None:
        # A function, like Lightning's closure: the step's tensors are freed when it returns
        # instead of living on into the next step (which changes CPU allocator behaviour).
        if args.naive_pure_loop:
            x = torch.bernoulli(images[index].float().div_(255))
        else:  # the project's gather and draw: the same kernels as vae-train
            x = prepare_images(images.index_select(0, index), fresh_draw=True)
        with torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
            loss = objective(model, likelihood, x, kl_weight=1.0).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return train_step


def run_pure_pytorch(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    images = training_images(args).to(device)  # stays uint8
    train_step = pure_loop_step(args, device, images)
    generator = torch.Generator().manual_seed(args.seed)
    seconds, cpu_seconds, counts = [], [], []
    for _ in range(args.epochs):
        synchronize(device)
        start, cpu_start, count = time.perf_counter(), time.process_time(), 0
        order = torch.randperm(len(images), generator=generator).to(device)
        for step, index in enumerate(order.split(args.batch_size)):
            if args.limit_batches and step == args.limit_batches:
                break
            train_step(index)
            count += len(index)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        counts.append(count)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "images": counts}


# --------------------------------------------------------------------------- paths b, c
def run_vae_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from epoch_timer import EpochTimer  # benchmarks/ is on sys.path: the script's folder
    from hydra import initialize_config_dir

    from vae_lightning.configs import CONFIG_PATH, compose_as_launched
    from vae_lightning.train import train

    out_dir = tempfile.mkdtemp(prefix="throughput-")
    overrides = [
        "data=fashion_mnist",
        f"data.root={args.data_root}",
        "data.download=false",
        f"data.val_size={args.val_size}",
        f"data.batch_size={args.batch_size}",
        f"data.loader={'torch' if args.path == 'c' else 'tensor'}",
        f"data.num_workers={args.workers if args.path == 'c' else 0}",
        f"model={args.model}",
        f"model.compile={args.compile}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        f"trainer.max_epochs={args.epochs}",
        "+trainer.limit_val_batches=0",  # validation off: we time training epochs
        "+trainer.num_sanity_val_steps=0",
        "test=false",
        f"seed={args.seed}",
        f"paths.output_dir={out_dir}",
        f"paths.log_dir={out_dir}",
        f"hydra.run.dir={out_dir}",
        "+callbacks.epoch_timer._target_=epoch_timer.EpochTimer",
    ]
    if args.data == "cifar-shaped":
        overrides += cifar_shaped_data(args.num_images, args.seed)
    if args.channels_last:
        overrides.append("++model.channels_last=true")
    if args.limit_batches:
        overrides.append(f"+trainer.limit_train_batches={args.limit_batches}")
    if args.interleaved:
        from interleaved import InterleavedPureLoop

        InterleavedPureLoop.make_pure_step = lambda images: pure_loop_step(args, device, images)
        overrides += [
            "+callbacks.interleaved._target_=interleaved.InterleavedPureLoop",
            f"+callbacks.interleaved.block={args.interleaved}",
            f"+callbacks.interleaved.seed={args.seed}",
        ]
    overrides += args.override
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        train(compose_as_launched("train", overrides))
    (timer,) = EpochTimer.instances
    result = {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "images": timer.images}
    if args.interleaved:
        (interleaved,) = InterleavedPureLoop.instances
        result["pairs"] = interleaved.pairs
    return result


def cifar_shaped_data(num_images: int, seed: int) -> list[str]:
    """Overrides swapping the IDX files for random_images.RandomImagesDataModule."""
    return [
        "data._target_=random_images.RandomImagesDataModule",
        f"data.image_shape={list(DATA_SHAPES['cifar-shaped'])}",
        f"+data.num_images={num_images}",
        f"+data.data_seed={seed}",
        "data.verify_checksums=false",
    ]


def worker(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as conf/trainer/gpu.yaml sets for b and c
        torch.cuda.reset_peak_memory_stats(device)
    result = (run_pure_pytorch if args.path == "a" else run_vae_train)(args, device)
    result.update(
        path=args.path,
        data=args.data,
        model=args.model,
        batch_size=args.batch_size,
        device=str(device),
        peak_rss_mb=peak_rss_mb(),
        cuda_max_allocated_mb=(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ driver
def run_case(args: argparse.Namespace, path: str, model: str, batch_size: int) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--path={path}",
        f"--model={model}",
        f"--batch-size={batch_size}",
        f"--epochs={args.epochs}",
        f"--limit-batches={args.limit_batches}",
        f"--device={args.device}",
        f"--precision={args.precision}",
        f"--data={args.data}",
        f"--num-images={args.num_images}",
        f"--data-root={args.data_root}",
        f"--val-size={args.val_size}",
        f"--workers={args.workers}",
        f"--interleaved={args.interleaved}",
        *(["--naive-pure-loop"] if args.naive_pure_loop else []),
        f"--threads={args.threads}",
        f"--seed={args.seed}",
        *(["--compile"] if args.compile else []),
        *(["--channels-last"] if args.channels_last else []),
        *(f"--override={override}" for override in args.override),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), *sys.path])}
    if args.malloc == "fixed":
        env.update(FIXED_MALLOC)
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"case {path}/{model}/{batch_size} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def steady(result: dict[str, Any], key: str = "seconds") -> float:
    """Median of ``result[key]`` (seconds per epoch) over the epochs after the first."""
    values = result[key]
    return statistics.median(values[1:] if len(values) > 1 else values)


def format_table(results: list[dict[str, Any]], cuda: bool) -> str:
    header = ["model", "batch", "path", "s/epoch", "CPU s/epoch", "1st epoch s", "images/s"]
    header += ["ratio (CPU)", "peak RSS MB"] + (["GPU max alloc MB"] if cuda else [])
    rows = [header, ["---"] * len(header)]
    by_case = {(r["model"], r["batch_size"], r["path"]): r for r in results}
    for r in results:
        ratio = ""
        ref = by_case.get((r["model"], r["batch_size"], {"b": "a", "c": "b"}.get(r["path"])))
        if ref is not None:
            wall, cpu = (steady(r, k) / steady(ref, k) for k in ("seconds", "cpu_seconds"))
            ratio = f"{r['path']}/{ref['path']} = {wall:.2f} ({cpu:.2f})"
        row = [
            r["model"],
            str(r["batch_size"]),
            f"{r['path']}: {PATHS[r['path']]}",
            f"{steady(r):.3f}",
            f"{steady(r, 'cpu_seconds'):.3f}",
            f"{r['seconds'][0]:.3f}",
            f"{r['images'][-1] / steady(r):,.0f}",
            ratio,
            f"{r['peak_rss_mb']:.0f}",
        ]
        if cuda:
            row.append(f"{r['cuda_max_allocated_mb']:.0f}")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def spread(values: list[float], digits: int = 3) -> str:
    """Median [min-max] of values."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )


def format_repeats_table(results: list[dict[str, Any]]) -> str:
    """Per case: s/epoch and CPU s/epoch, median [min-max] over the repeats, and the ratio to
    its reference path paired within each repeat (same invocation round), median [min-max]."""
    header = ["model", "batch", "path", "repeats", "s/epoch", "CPU s/epoch", "paired ratio"]
    header += ["peak RSS MB"]
    rows = [header, ["---"] * len(header)]
    cases: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
    for r in results:
        cases.setdefault((r["model"], r["batch_size"], r["path"]), {})[r["repeat"]] = r
    for (model, batch_size, path), runs in cases.items():
        ratio = ""
        ref_path = {"b": "a", "c": "b"}.get(path)
        ref = cases.get((model, batch_size, ref_path)) if ref_path else None
        if ref is not None:
            ratios = [steady(run) / steady(ref[i]) for i, run in runs.items() if i in ref]
            ratio = f"{path}/{ref_path} = {spread(ratios, 2)}"
        rows.append(
            [
                model,
                str(batch_size),
                f"{path}: {PATHS[path]}",
                str(len(runs)),
                spread([steady(run) for run in runs.values()]),
                spread([steady(run, "cpu_seconds") for run in runs.values()]),
                ratio,
                f"{max(run['peak_rss_mb'] for run in runs.values()):.0f}",
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def machine_line(device: torch.device, args: argparse.Namespace) -> str:
    load = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    parts = [
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} torch threads per case",
        f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    return "; ".join(parts)


# --interleaved: paths a and b in one process (interleaved.py).
def interleaved_figures(result: dict[str, Any]) -> tuple[float, float, list[float]]:
    """us per image of b and of a over the blocks after the first epoch (warm-up), and the
    ratio b/a of each of those blocks."""
    pairs = [pair for pair in result["pairs"] if pair[0] >= 1]
    b_us = 1e6 * sum(p[1] for p in pairs) / sum(p[2] for p in pairs)
    a_us = 1e6 * sum(p[3] for p in pairs) / sum(p[4] for p in pairs)
    return b_us, a_us, [(p[1] / p[2]) / (p[3] / p[4]) for p in pairs]


def run_interleaved(args: argparse.Namespace) -> None:
    """Per model and batch size, ``--repeats`` processes of path b with path a inside; the
    table gives median [min-max] over the processes."""
    rows = [["model", "batch", "repeats", "b: us/image", "a: us/image", "b/a", "blocks"]]
    rows.append(["---"] * len(rows[0]))
    results = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            measured = []
            for repeat in range(args.repeats):
                result = run_case(args, "b", model, batch_size)
                results.append({**result, "repeat": repeat})
                b_us, a_us, per_block = interleaved_figures(result)
                print(
                    f"{model:4} batch {batch_size:5} #{repeat}: b {b_us:7.2f} us/image, "
                    f"a {a_us:7.2f} us/image, b/a {b_us / a_us:.3f} (per block: "
                    f"{spread(per_block, 2)}, {len(per_block)} blocks)",
                    flush=True,
                )
                measured.append((b_us, a_us, b_us / a_us, len(per_block)))
            b_column, a_column, ratios, blocks = map(list, zip(*measured, strict=True))
            rows.append(
                [
                    model,
                    str(batch_size),
                    str(args.repeats),
                    spread(b_column, 2),
                    spread(a_column, 2),
                    f"**{spread(ratios, 3)}**",
                    str(sum(blocks)),
                ]
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print()
    if args.markdown:
        print(f"Command: `{' '.join(['python', *sys.argv])}`\n")
    print("\n".join("| " + " | ".join(row) + " |" for row in rows))


# --families: each family as vae-train runs it (path b), by the model and overrides it takes.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "standard": ("mlp", []),
    "mog": ("mlp", ["prior=mog"]),
    "vamp": ("mlp", ["prior=vamp"]),
    "planar": ("mlp", ["posterior=planar"]),
    "iaf": ("mlp", ["posterior=iaf"]),
    "hvae": ("hvae", []),
    "cvae": ("cvae", []),
    "iwae5": ("mlp", ["objective=iwae", "objective.k=5"]),
    "beta_tc": ("mlp", ["objective=beta_tc"]),
    "capacity": ("mlp", ["objective=capacity"]),
}


def run_families(args: argparse.Namespace) -> None:
    """Path b for every family at each batch size: s/epoch and CPU s/epoch (the steadier
    figure on a shared machine with --threads 1), each with its ratio to the standard VAE."""
    lines = [
        "| family | batch | s/epoch | CPU s/epoch | images/s | vs standard (CPU) | peak RSS MB |",
        "|---" * 7 + "|",
    ]
    for batch_size in args.batch_sizes:
        standard = None
        for family, (model, overrides) in FAMILIES.items():
            case = argparse.Namespace(**{**vars(args), "override": [*args.override, *overrides]})
            result = run_case(case, "b", model, batch_size)
            secs, cpu = steady(result), steady(result, "cpu_seconds")
            standard = standard or (secs, cpu)
            print(
                f"{family:9} batch {batch_size:5}: {secs:7.3f} s/epoch, CPU {cpu:.3f}", flush=True
            )
            lines.append(
                f"| {family} | {batch_size} | {secs:.2f} | {cpu:.2f} | "
                f"{result['images'][-1] / secs:,.0f} | {secs / standard[0]:.2f} "
                f"({cpu / standard[1]:.2f}) | {result['peak_rss_mb']:.0f} |"
            )
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv", "resnet"]
    )
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        choices=list(DATA_SHAPES),
        help="Fashion-MNIST from --data-root, or random uint8 images of CIFAR-10's shape",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=50_000,
        help="training images per epoch with --data cifar-shaped (CIFAR-10 has 50 000)",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--paths", nargs="+", default=["a", "b", "c"], choices=list(PATHS))
    parser.add_argument("--epochs", type=int, default=4, help="per case; the first is warm-up")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every case this many times, interleaved; report median [min-max] and the "
        "paired ratio per repeat",
    )
    parser.add_argument(
        "--limit-batches", type=int, default=0, help="stop each epoch after N batches (smoke)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precision",
        default="32-true",
        choices=["32-true", "bf16-mixed", "16-mixed"],
        help="trainer.precision for b/c; the matching autocast for a",
    )
    parser.add_argument("--compile", action="store_true", help="model.compile=true everywhere")
    parser.add_argument(
        "--channels-last", action="store_true", help="model.channels_last=true everywhere"
    )
    parser.add_argument(
        "--naive-pure-loop",
        action="store_true",
        help="path a as written by hand: images[index], torch.bernoulli and "
        "torch.optim.Adam(lr=1e-3), not the project's gather, binarization and fused Adam",
    )
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers for path c")
    parser.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="STEPS",
        help="run path a inside path b's process, alternating blocks of STEPS steps "
        "(interleaved.py): the ratio b/a without the machine's drift between processes; "
        "--paths is then ignored",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra Hydra override for b and c, repeatable (e.g. --override=~callbacks.nan_guard)",
    )
    parser.add_argument(
        "--malloc",
        choices=["fixed", "default"],
        default="fixed",
        help="glibc malloc thresholds of the worker processes (see FIXED_MALLOC)",
    )
    parser.add_argument("--data-root", type=Path, default=FASHION_MNIST)
    parser.add_argument("--val-size", type=int, default=VAL_SIZE)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--families", action="store_true", help="path b for each model family (FAMILIES)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a RESULTS.md section")
    # One case in this process (used by the driver).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data == "cifar-shaped" and "c" in args.paths and not args.worker:
        parser.error(
            "--data cifar-shaped times paths a and b only (--paths a b): path c's per-sample "
            "Dataset (data/datamodule.py ImageDataset) builds greyscale PIL images."
        )
    if (
        args.data == "fashion-mnist"
        and not (args.data_root / "train-images-idx3-ubyte.gz").is_file()
    ):
        parser.error(
            f"{args.data_root}/train-images-idx3-ubyte.gz not found: install Debian's "
            "dataset-fashion-mnist or pass --data-root with the four gzipped IDX files."
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    device = resolve_device(args.device)
    print(f"# Machine: {machine_line(device, args)}", flush=True)
    if args.families:
        run_families(args)
        return
    shape = "x".join(map(str, DATA_SHAPES[args.data]))
    count = args.num_images if args.data == "cifar-shaped" else "Fashion-MNIST's"
    print(f"# Data: {args.data}, {count} training images of {shape}", flush=True)
    if args.interleaved:
        run_interleaved(args)
        return
    results = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            for repeat in range(args.repeats):
                # Interleaved, the order reversed every other repeat: a drift of the machine
                # (another process, frequency, the host) then falls on every path alike.
                paths = args.paths if repeat % 2 == 0 else args.paths[::-1]
                for path in paths:
                    result = run_case(args, path, model, batch_size)
                    result["repeat"] = repeat
                    secs = steady(result)
                    print(
                        f"{model:4} batch {batch_size:5} {path} #{repeat}: {secs:7.3f} s/epoch "
                        f"{result['images'][-1] / secs:10,.0f} images/s  (epochs: "
                        + " ".join(f"{s:.3f}" for s in result["seconds"])
                        + f")  peak RSS {result['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
                    results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print()
    if args.markdown:
        print(f"Command: `{' '.join(['python', *sys.argv])}`\n")
    if args.repeats == 1:
        print(format_table(results, cuda=device.type == "cuda"))
    else:
        print(format_repeats_table(results))
    load = os.getloadavg()
    print(f"\n# load average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
