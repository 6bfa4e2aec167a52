"""data=celeba at 64x64: peak memory of the first run's decode and of later runs' setup,
with the decoded images in memory and memory-mapped.

Writes a CelebA-format folder of the real size (202,599 aligned-CelebA-sized 178x218 JPEGs of
cheap content, a few random rectangles on a noisy background, and list_eval_partition.txt
with the official split sizes 162,770 / 19,867 / 19,962) under --folder, skipping files that
already exist. Then each measurement runs in its own Python process, so that each peak
resident set size (``ru_maxrss`` of RUSAGE_SELF; the decode uses threads, and RUSAGE_CHILDREN
counts any child processes) is its own:

  first     the first run: prepare_data() decodes every JPEG into the uint8 cache, then
            setup("fit") loads it (data.max_memory_gb at its default, 8);
  memory    a later run, data.max_memory_gb large: the cache is read into memory and split;
  mapped    a later run, data.max_memory_gb small: the training split stays memory-mapped.

For the later runs the peak is read after setup() and again after --batches training batches
of the tensor loader (memory-mapped pages are read, and count as resident, as batches touch
them). "now" is the resident size at that moment (/proc/self/statm), so peak minus now after
setup is what setup held only briefly. Peak memory is valid on a busy machine; the times are
only valid on a quiet one (see the load averages printed with the table).

Full run (the JPEG folder, ~1-2 GB, takes a few minutes to write; the cache is 2.3 GiB):
    PYTHONPATH=src python benchmarks/celeba_memory.py --json celeba_memory.json
Smoke run:
    PYTHONPATH=src python benchmarks/celeba_memory.py --limit 2000 --batches 20
The folder and the cache are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

OFFICIAL_SPLITS = (("0", 162_770), ("1", 19_867), ("2", 19_962))  # train, valid, test
IMAGE_SIZE = (178, 218)  # aligned CelebA, width x height
SHAPE = (3, 64, 64)
FIRST_MAX_MEMORY_GB = 8.0  # the default of conf/data/celeba.yaml
IN_MEMORY_GB, MAPPED_GB = 64.0, 0.01
MB = 2**20


# ------------------------------------------------------------------ the folder
def split_sizes(count: int) -> list[tuple[str, int]]:
    """The official split sizes, scaled down proportionally for a smoke run."""
    total = sum(size for _, size in OFFICIAL_SPLITS)
    if count >= total:
        return list(OFFICIAL_SPLITS)
    train = round(count * OFFICIAL_SPLITS[0][1] / total)
    valid = round(count * OFFICIAL_SPLITS[1][1] / total)
    return [("0", train), ("1", valid), ("2", count - train - valid)]


def face_like(number: int) -> np.ndarray:
    """A cheap 218x178 RGB picture: noise blocks under a few coloured rectangles."""
    rng = np.random.default_rng(number)
    width, height = IMAGE_SIZE
    blocks = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.ascontiguousarray(blocks.repeat(8, 0).repeat(8, 1)[:height, :width])
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        x1, y1 = x0 + rng.integers(10, width - x0), y0 + rng.integers(10, height - y0)
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return pixels


def write_images(task: tuple[str, list[int]]) -> int:
    """Write the JPEGs numbered ``numbers`` into ``folder`` unless present; returns how many."""
    folder, numbers = task
    written = 0
    for number in numbers:
        path = Path(folder) / f"{number:06d}.jpg"
        if not path.exists():
            Image.fromarray(face_like(number)).save(path, quality=90)
            written += 1
    return written


def write_celeba(root: Path, count: int, processes: int) -> dict[str, float]:
    """<root>/celeba/img_align_celeba/NNNNNN.jpg and <root>/celeba/list_eval_partition.txt."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    chunk = 1000
    tasks = [
        (str(folder), list(range(n, min(n + chunk, count + 1))))
        for n in range(1, count + 1, chunk)
    ]
    with multiprocessing.Pool(processes) as pool:
        written = sum(pool.imap_unordered(write_images, tasks))
    lines, number = [], 1
    for code, size in split_sizes(count):
        for _ in range(size):
            lines.append(f"{number:06d}.jpg {code}")
            number += 1
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    jpeg_bytes = sum(entry.stat().st_size for entry in os.scandir(folder))
    return {
        "written": written,
        "write_s": round(time.perf_counter() - start, 1),
        "jpeg_mb": round(jpeg_bytes / MB),
    }


# ------------------------------------------------------------- one measurement
def resident_mb() -> float:
    """This process's resident set size now."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def measure(phase: str, root: Path, cache_dir: Path, batches: int, workers: int | None) -> dict:
    """Run one phase in this process (see the module docstring) and return its figures."""
    from vae_lightning.data import CelebADataModule

    max_memory_gb = {"first": FIRST_MAX_MEMORY_GB, "memory": IN_MEMORY_GB}.get(phase, MAPPED_GB)
    result: dict = {"phase": phase, "max_memory_gb": max_memory_gb}
    result["baseline_peak_mb"] = round(peak_mb())  # Python, torch, Lightning imported
    dm = CelebADataModule(
        root=str(root),
        download=False,
        cache_dir=str(cache_dir),
        max_memory_gb=max_memory_gb,
        decode_workers=workers,
        binarize="none",
    )
    start = time.perf_counter()
    dm.prepare_data()
    result["prepare_s"] = round(time.perf_counter() - start, 2)
    if phase == "first":
        images = len(dm.decoded.images)
        result["decode_images_per_s"] = round(images / result["prepare_s"])
        result["prepare_peak_mb"] = round(peak_mb())
    start = time.perf_counter()
    dm.setup("fit")
    result["setup_s"] = round(time.perf_counter() - start, 2)
    result["mapped"] = dm.decoded.mapped
    result["images"] = sum(len(images) for images, _ in dm.splits.values())
    result["uint8_mb"] = round(result["images"] * math.prod(SHAPE) / MB)
    result["setup_peak_mb"] = round(peak_mb())
    result["setup_now_mb"] = round(resident_mb())
    if phase != "first":
        start = time.perf_counter()
        seen = 0
        for seen, batch in enumerate(dm.train_dataloader(), start=1):
            dm.on_after_batch_transfer(batch, 0)
            if seen == batches:
                break
        result["batches"] = seen
        result["batches_s"] = round(time.perf_counter() - start, 2)
        result["batches_peak_mb"] = round(peak_mb())
        result["batches_now_mb"] = round(resident_mb())
    result["children_peak_mb"] = round(peak_mb(resource.RUSAGE_CHILDREN))
    return result


def run_phase(phase: str, args: argparse.Namespace, cache_dir: Path) -> dict:
    """``measure`` in a fresh Python process; its last output line is the JSON result."""
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--folder",
        str(args.folder),
        "--cache-dir",
        str(cache_dir),
        "--batches",
        str(args.batches),
    ]
    if args.workers:
        command += ["--workers", str(args.workers)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- report
def markdown(rows: list[dict]) -> str:
    names = {
        "first": "first run: decode + setup",
        "memory": "later run, in memory",
        "mapped": "later run, memory-mapped",
    }
    lines = [
        "| run | max_memory_gb | uint8 data MB | peak after imports MB | peak after setup MB "
        "| resident after setup MB | prepare_data + setup s | peak after batches MB "
        "| resident after batches MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        setup_s = f"{row['prepare_s']} + {row['setup_s']}"
        if row["phase"] == "first":
            speed = row["decode_images_per_s"]
            setup_s = f"{row['prepare_s']} decode ({speed} img/s) + {row['setup_s']}"
        lines.append(
            f"| {names[row['phase']]} | {row['max_memory_gb']:g} | {row['uint8_mb']} | "
            f"{row['baseline_peak_mb']} | {row['setup_peak_mb']} | {row['setup_now_mb']} | "
            f"{setup_s} | {row.get('batches_peak_mb', '-')} | {row.get('batches_now_mb', '-')} |"
        )
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": Image.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/celeba-memory-bench"))
    parser.add_argument("--limit", type=int, help="this many images instead of 202,599")
    parser.add_argument("--batches", type=int, default=200, help="training batches per run")
    parser.add_argument("--workers", type=int, help="decode threads (default: one per CPU)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=Path("celeba_memory.json"))
    parser.add_argument("--keep", action="store_true", help="keep the folder and the cache")
    parser.add_argument("--phase", choices=("first", "memory", "mapped"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child process: one measurement, printed as the last line
        print(
            json.dumps(
                measure(args.phase, args.folder, args.cache_dir, args.batches, args.workers)
            )
        )
        return
    count = args.limit or sum(size for _, size in OFFICIAL_SPLITS)
    cache_dir = args.folder / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)  # the first run must decode
    load_before = os.getloadavg()
    try:
        written = write_celeba(args.folder, count, args.processes)
        print(f"{count} images in {args.folder}: {written}", flush=True)
        rows = []
        for phase in ("first", "memory", "mapped"):
            rows.append(run_phase(phase, args, cache_dir))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    report = {
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "images": count,
        "folder": written,
        "rows": rows,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    facts = report["machine"]
    print(
        f"\n# {facts['host']}, {facts['cpus']} CPUs, {facts['memory_gb']} GiB, torch "
        f"{facts['torch']}, Pillow {facts['pillow']}; load average before "
        f"{report['load_average_before']}, after {report['load_average_after']}; JSON: "
        f"{args.json}"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
