"""Startup: how long does ``vae-train debug=fast`` take next to importing its stack?

Issue #16's target: the total wall time of ``vae-train debug=fast data=fashion_mnist``
(one epoch of 5 training batches, 2 validation and 2 test batches, the test, the report)
at most 1.5x the bare import time of ``import torch, lightning, hydra, torchvision``,
measured in the same run. Both are fresh subprocesses timed from outside (interpreter start
and exit included), interleaved repeat by repeat so that a load that comes and goes hits
both alike; each training run writes into its own temporary run dir. Printed: the median and
the spread (min-max) of each, the ratio of the medians and the median of the per-repeat
ratios.

    PYTHONPATH=src python benchmarks/startup.py                 # 5 repeats
    PYTHONPATH=src python benchmarks/startup.py --repeats 3 --markdown
Where the time goes (one extra run each, not timed with the repeats):
    PYTHONPATH=src python benchmarks/startup.py --repeats 0 --importtime  # slowest imports
    PYTHONPATH=src python benchmarks/startup.py --repeats 0 --cprofile    # vae-train's calls
    PYTHONPATH=src python benchmarks/startup.py --repeats 0 --phases      # wall s per phase
Other overrides for vae-train are passed after ``--``, e.g. ``-- model=conv``.
"""

from __future__ import annotations

import argparse
import ast
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BARE_IMPORTS = "import torch, lightning, hydra, torchvision"
TARGET_RATIO = 1.5


# --phases: vae-train's main run in a process whose chosen functions are timed (wall clock,
# no profiler overhead); nested phases are counted inside their parents too.
PHASES = {
    "hydra: run mode (composes)": ("hydra._internal.hydra", "Hydra.get_mode"),
    "hydra: run (composes, runs the job)": ("hydra._internal.hydra", "Hydra.run"),
    "train(cfg)": ("vae_lightning.train", "train"),
    "config check": ("vae_lightning.train", "check_config"),
    "model build + dry run": ("vae_lightning.train", "build_checked_model"),
    "data prepare": ("vae_lightning.data.datamodule", "MNISTDataModule.prepare_data"),
    "data setup": ("vae_lightning.data.datamodule", "TensorImageDataModule.setup"),
    "run record": ("vae_lightning.train", "save_run_record"),
    "loggers": ("vae_lightning.train", "instantiate_loggers"),
    "callbacks": ("vae_lightning.train", "instantiate_named"),
    "Trainer()": ("lightning.pytorch.trainer.trainer", "Trainer.__init__"),
    "fit": ("lightning.pytorch.trainer.trainer", "Trainer.fit"),
    "  visual callbacks": (
        "vae_lightning.callbacks.base",
        "VisualCallback.on_validation_epoch_end",
    ),
    "    images": ("vae_lightning.callbacks.images", "ReconstructionsAndSamples.log_visuals"),
    "    traversals": ("vae_lightning.callbacks.traversals", "LatentTraversals.log_visuals"),
    "    interpolations": (
        "vae_lightning.callbacks.interpolations",
        "LatentInterpolations.log_visuals",
    ),
    "    latent space": ("vae_lightning.callbacks.latent_space", "LatentSpace.log_visuals"),
    "    posterior collapse": (
        "vae_lightning.callbacks.posterior_collapse",
        "PosteriorCollapse.on_validation_epoch_end",
    ),
    "  checkpoint saves": ("lightning.pytorch.trainer.trainer", "Trainer.save_checkpoint"),
    "test": ("lightning.pytorch.trainer.trainer", "Trainer.test"),
    "  IWAE": ("vae_lightning.models.iwae", "iwae_log_likelihood"),
    "hparams tab": ("vae_lightning.train", "log_hparams"),
    "report": ("vae_lightning.train", "write_report_after_training"),
}
PHASE_RUNNER = """
import time
started = time.time()
import atexit, functools, importlib, sys
phases, totals = {phases!r}, {{}}
def timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
    return wrapper
imports_start = time.perf_counter()
import vae_lightning.train
totals["imports of vae_lightning.train"] = time.perf_counter() - imports_start
for name, (module_name, attribute) in phases.items():
    owner = importlib.import_module(module_name)
    *path, leaf = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, leaf, timed(name, getattr(owner, leaf)))
def show():
    totals["after main, until atexit"] = time.perf_counter() - main_end
    totals["started"], totals["atexit"] = started, time.time()
    sys.__stdout__.write("PHASES " + repr(totals) + "\\n")
atexit.register(show)
sys.argv = ["vae-train", *sys.argv[1:]]
main_start = time.perf_counter()
try:
    vae_lightning.train.main()
finally:
    main_end = time.perf_counter()
    totals["vae_lightning.train.main"] = main_end - main_start
"""


def child_env() -> dict[str, str]:
    """The environment of both subprocesses: this checkout's src/ first on the path."""
    env = dict(os.environ)
    src = str(PROJECT_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def train_command(run_dir: Path, overrides: list[str], data: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vae_lightning.train",
        "debug=fast",
        f"data={data}",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent}",
        *overrides,
    ]


def timed(command: list[str], cwd: Path) -> float:
    """Wall seconds of ``command`` in a fresh process; its output is kept only on failure."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{' '.join(command)} failed with exit status {done.returncode}")
    return seconds


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})"


def measure(args: argparse.Namespace, workdir: Path) -> None:
    imports, trains = [], []
    for repeat in range(args.repeats):
        # Alternate which goes first, so that neither always runs on a cold page cache.
        order = ("import", "train") if repeat % 2 == 0 else ("train", "import")
        for kind in order:
            if kind == "import":
                imports.append(timed([sys.executable, "-c", BARE_IMPORTS], PROJECT_ROOT))
            else:
                run_dir = workdir / f"repeat_{repeat}" / "run"
                command = train_command(run_dir, args.overrides, args.data)
                trains.append(timed(command, PROJECT_ROOT))
        print(
            f"repeat {repeat + 1}/{args.repeats}: imports {imports[-1]:.2f} s, "
            f"vae-train debug=fast {trains[-1]:.2f} s, ratio {trains[-1] / imports[-1]:.2f}",
            flush=True,
        )
    ratio = statistics.median(trains) / statistics.median(imports)
    paired = statistics.median(t / i for t, i in zip(trains, imports, strict=True))
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"\nbare imports ({BARE_IMPORTS}): {spread(imports)}")
    print(f"vae-train debug=fast data={args.data}: {spread(trains)}")
    print(
        f"ratio of medians {ratio:.2f} (paired median {paired:.2f}); {verdict} <= {TARGET_RATIO}"
    )
    if args.markdown:
        print("\n| measured | median s | min-max s |\n|---|---|---|")
        for name, values in (("bare imports", imports), ("vae-train debug=fast", trains)):
            print(
                f"| {name} | {statistics.median(values):.2f} | "
                f"{min(values):.2f}-{max(values):.2f} |"
            )
        print(f"| ratio (medians) | {ratio:.2f} | paired median {paired:.2f} |")


def import_breakdown(args: argparse.Namespace, workdir: Path) -> None:
    """Where one vae-train run's import time goes, package by package (``-X importtime``)."""
    command = train_command(workdir / "importtime" / "run", args.overrides, args.data)
    command[1:1] = ["-X", "importtime"]
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit("the -X importtime run failed")
    line = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
    own: dict[str, int] = {}  # per distribution (first dotted name): its modules' own time
    for match in filter(None, map(line.match, done.stderr.splitlines())):
        package = match.group(4).split(".")[0]
        own[package] = own.get(package, 0) + int(match.group(1))
    print(f"\n-X importtime: {sum(own.values()) / 1e6:.2f} s of imports; by package (own time):")
    for name, micros in sorted(own.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {micros / 1e6:6.2f} s  {name}")


def call_breakdown(args: argparse.Namespace, workdir: Path) -> None:
    """The calls of one vae-train run that take the most cumulative time (cProfile)."""
    stats_file = workdir / "train.prof"
    command = train_command(workdir / "cprofile" / "run", args.overrides, args.data)
    command[1:3] = ["-m", "cProfile", "-o", str(stats_file), "-m", "vae_lightning.train"]
    timed(command, PROJECT_ROOT)
    print(f"\ncProfile of vae-train debug=fast (top {args.top} by cumulative time):")
    stats = pstats.Stats(str(stats_file), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(args.top)
    print("... and of the project's own functions (imports left out):")
    stats.print_stats(r"vae_lightning/(?!.*<module>)", args.top)


def phase_breakdown(args: argparse.Namespace, workdir: Path) -> None:
    """Wall seconds of vae-train's phases in one run (see PHASES)."""
    command = train_command(workdir / "phases" / "run", args.overrides, args.data)
    command[1:3] = ["-c", PHASE_RUNNER.format(phases=PHASES)]
    start = time.time()  # the epoch clock: compared with the child's
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True
    )
    end = time.time()
    lines = [line for line in done.stdout.splitlines() if line.startswith("PHASES ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit("the --phases run failed")
    totals = ast.literal_eval(lines[-1].removeprefix("PHASES "))
    totals["interpreter start"] = totals["started"] - start
    totals["atexit, interpreter exit"] = end - totals["atexit"]
    print(f"\nPhases of one vae-train debug=fast run ({end - start:.2f} s wall in all):")
    names = ["interpreter start", "imports of vae_lightning.train", "vae_lightning.train.main"]
    tail = ["after main, until atexit", "atexit, interpreter exit"]
    for name in [*names, *PHASES, *tail]:
        if name in totals:
            print(f"  {totals[name]:6.2f} s  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="paired runs (0: none)")
    parser.add_argument("--data", default="fashion_mnist", help="data= of vae-train")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--importtime", action="store_true", help="one -X importtime run")
    parser.add_argument("--cprofile", action="store_true", help="one cProfile run")
    parser.add_argument("--phases", action="store_true", help="one run timed by phase")
    parser.add_argument("--top", type=int, default=25, help="lines of each breakdown")
    parser.add_argument("overrides", nargs="*", help="more vae-train overrides (after --)")
    args = parser.parse_args()
    if args.data == "fashion_mnist" and not FASHION_MNIST.is_dir():
        raise SystemExit(
            f"data=fashion_mnist needs {FASHION_MNIST} "
            "(Debian: apt-get install dataset-fashion-mnist)."
        )
    with tempfile.TemporaryDirectory(prefix="startup_bench_") as tmp:
        workdir = Path(tmp)
        if args.repeats > 0:
            measure(args, workdir)
        if args.importtime:
            import_breakdown(args, workdir)
        if args.phases:
            phase_breakdown(args, workdir)
        if args.cprofile:
            call_breakdown(args, workdir)


if __name__ == "__main__":
    main()
