"""One GPU, side by side: how close does vae-train's graphed step get to a graphed bare loop?

The same VAE (the MLP 784-400-20 of model=mlp unless said otherwise) on Fashion-MNIST's 55 000
training images, Adam lr 1e-3, batch 128, no gradient clipping (the default config), trained
in each of these ways, each in its own subprocess:

  graphed-loop     a bare PyTorch loop whose whole step (gather the batch on the GPU,
                   binarize, forward, ELBO, backward, Adam) is one CUDA graph, replayed once
                   per batch (written here, independent of the project's static_step.py):
                   the floor. It drops the last partial batch of an epoch.
  vae-train-graph  vae-train with model.train_step=cuda_graph.
  vae-train        vae-train with Lightning's automatic optimization (model.train_step
                   default). Both vae-train cases drop the NaN guard (~callbacks.nan_guard),
                   which the graphed step refuses, so that they differ by the step alone.
  examples         a loop in the style of pytorch/examples' VAE script (written here): its
                   own 784-400-20 MLP, BCE on grey levels plus the closed-form KL, a
                   per-sample Dataset in host memory, a DataLoader (pinned memory, one
                   worker) and a host-to-device copy per batch.
  pythae           pythae's BaseTrainer on a VAE with the same 784-400-20 MLP (skipped with
                   a message when pythae is not importable).
  conv-fp32        vae-train model=conv in trainer.precision=32-true ...
  conv-bf16        ... and in bf16-mixed (issue #16: bf16 >= 1.5x faster than fp32);
  conv-bf16-graph  ... and bf16-mixed with model.train_step=cuda_graph.

s/epoch is the median over the epochs after the first (warm-up, capture, cuDNN autotuning).
The table gives images per second and each case's time per image relative to graphed-loop.
The MLP cases run in --precision (bf16-mixed on a GPU, trainer=gpu as shipped; 32-true on a
CPU). On a CPU (--device cpu, a smoke run only) nothing is captured: graphed-loop runs its
step eagerly and vae-train-graph uses model.train_step=static_eager.

Measure (one GPU; Fashion-MNIST's four .gz files in --data-root):
    PYTHONPATH=src python benchmarks/gpu_step.py --epochs 5
Smoke run (any machine, a few batches):
    PYTHONPATH=src python benchmarks/gpu_step.py --device cpu --epochs 2 --limit-batches 3 \\
        --cases graphed-loop vae-train-graph vae-train examples pythae
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
VAL_SIZE = 5000
RESULT_PREFIX = "GPU_STEP_RESULT "
CASES = {
    "graphed-loop": "bare loop, whole step one CUDA graph",
    "vae-train-graph": "vae-train, model.train_step=cuda_graph",
    "vae-train": "vae-train, automatic optimization",
    "examples": "pytorch/examples-style VAE loop",
    "pythae": "pythae BaseTrainer",
    "conv-fp32": "vae-train model=conv, 32-true",
    "conv-bf16": "vae-train model=conv, bf16-mixed",
    "conv-bf16-graph": "vae-train model=conv, bf16-mixed, cuda_graph",
}
AUTOCAST = {"bf16-mixed": torch.bfloat16}


# ----------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_images(root: Path) -> torch.Tensor:
    """uint8 (55000, 1, 28, 28): the images vae-train trains on, less its validation split
    (which images those are does not matter for timing)."""
    from throughput import read_train_images  # benchmarks/ is on sys.path

    return read_train_images(root)[:-VAL_SIZE]


def timed_epochs(
    epochs: int, device: torch.device, run_epoch: Any
) -> dict[str, list[float] | list[int]]:
    """Wall seconds and images of each call of ``run_epoch() -> images``, CUDA synchronised."""
    seconds, counts = [], []
    for _ in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        count = run_epoch()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        counts.append(count)
    return {"seconds": seconds, "images": counts}


# ------------------------------------------------------------------------ graphed loop
def run_graphed_loop(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from throughput import build_net

    from vae_lightning.models.likelihoods import Bernoulli
    from vae_lightning.models.objectives import ELBO

    torch.manual_seed(args.seed)
    images = training_images(args.data_root).to(device)
    model = build_net(args.model, (1, 28, 28)).to(device)
    cuda = device.type == "cuda"
    # capturable: Adam's step counter and bias corrections on the device, no host sync.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=cuda)
    objective, likelihood = ELBO(), Bernoulli()
    dtype = AUTOCAST.get(args.precision)
    index = torch.zeros(args.batch_size, dtype=torch.long, device=device)  # the graph's input

    def step() -> None:
        x = torch.bernoulli(images[index].float().div_(255))
        # No autocast cache: captured, each replay must cast the current weights.
        with torch.autocast(device.type, dtype, enabled=dtype is not None, cache_enabled=False):
            loss = objective(model, likelihood, x, kl_weight=1.0).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    run_step = step
    if cuda:
        index.copy_(torch.randperm(len(images), device=device)[: args.batch_size])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuBLAS handles, Adam's state (real steps, timed out)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run_step = graph.replay

    def epoch() -> int:
        order = torch.randperm(len(images), device=device)
        batches = len(images) // args.batch_size
        if args.limit_batches:
            batches = min(batches, args.limit_batches)
        for number in range(batches):
            index.copy_(order[number * args.batch_size : (number + 1) * args.batch_size])
            run_step()
        return batches * args.batch_size

    return timed_epochs(args.epochs, device, epoch)


# ---------------------------------------------------------------------------- vae-train
def run_vae_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from epoch_timer import EpochTimer
    from hydra import initialize_config_dir

    from vae_lightning.configs import CONFIG_PATH, compose_as_launched
    from vae_lightning.train import train

    conv = args.case.startswith("conv")
    precision = {"conv-fp32": "32-true"}.get(args.case, "bf16-mixed" if conv else args.precision)
    graphed = args.case.endswith("-graph")
    train_step = ("cuda_graph" if device.type == "cuda" else "static_eager") if graphed else None
    out_dir = tempfile.mkdtemp(prefix="gpu-step-")
    overrides = [
        "data=fashion_mnist",
        f"data.root={args.data_root}",
        "data.download=false",
        f"data.val_size={VAL_SIZE}",
        f"data.batch_size={args.batch_size}",
        f"model={'conv' if conv else args.model}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={precision}",
        f"trainer.max_epochs={args.epochs}",
        "+trainer.limit_val_batches=0",  # validation off: training epochs are timed
        "+trainer.num_sanity_val_steps=0",
        "~callbacks.nan_guard",  # refused by the graphed step; dropped in both for a fair pair
        "test=false",
        "report=false",
        f"seed={args.seed}",
        f"paths.output_dir={out_dir}",
        f"paths.log_dir={out_dir}",
        f"hydra.run.dir={out_dir}",
        "+callbacks.epoch_timer._target_=epoch_timer.EpochTimer",
    ]
    if train_step:
        overrides.append(f"model.train_step={train_step}")
    if args.limit_batches:
        overrides.append(f"+trainer.limit_train_batches={args.limit_batches}")
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        train(compose_as_launched("train", overrides))
    (timer,) = EpochTimer.instances
    return {"seconds": timer.seconds, "images": timer.images, "overrides": overrides}


# ----------------------------------------------------------------- pytorch/examples-style
class ExampleVAE(torch.nn.Module):
    """The examples script's shape of model: 784-400-(20, 20), 20-400-784, written anew."""

    def __init__(self, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(784, hidden)
        self.mean, self.log_var = torch.nn.Linear(hidden, latent), torch.nn.Linear(hidden, latent)
        self.expand, self.out = torch.nn.Linear(latent, hidden), torch.nn.Linear(hidden, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.relu(self.hidden(x.view(-1, 784)))
        mu, log_var = self.mean(h), self.log_var(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return torch.sigmoid(self.out(torch.relu(self.expand(z)))), mu, log_var


def run_examples(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(args.seed)
    images = training_images(args.data_root).float().div_(255)  # grey levels, host memory
    cuda = device.type == "cuda"
    loader = DataLoader(
        TensorDataset(images, torch.zeros(len(images))),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=1 if cuda else 0,
        pin_memory=cuda,
    )
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch() -> int:
        model.train()
        count = 0
        for number, (x, _) in enumerate(loader):
            if args.limit_batches and number == args.limit_batches:
                break
            x = x.to(device)
            optimizer.zero_grad()
            recon, mu, log_var = model(x)
            bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
            kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
            loss = bce + kl  # summed over the batch, as the script does
            loss.backward()
            optimizer.step()
            count += len(x)
        return count

    return timed_epochs(args.epochs, device, epoch)


# ------------------------------------------------------------------------------ pythae
def run_pythae(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    try:
        import pythae  # noqa: F401
    except ImportError:
        return {"skipped": "pythae is not importable here (pip install pythae to add it)"}
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(784, 400)
            self.mean, self.log_var = torch.nn.Linear(400, 20), torch.nn.Linear(400, 20)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            h = torch.relu(self.hidden(x.reshape(len(x), -1)))
            return ModelOutput(embedding=self.mean(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(20, 400), torch.nn.ReLU(), torch.nn.Linear(400, 784)
            )

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(-1, 1, 28, 28))

    class EpochClock(TrainingCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
            synchronize(device)
            self._start = time.perf_counter()

        def on_epoch_end(self, training_config: Any, **kwargs: Any) -> None:
            synchronize(device)
            self.seconds.append(time.perf_counter() - self._start)

    images = training_images(args.data_root).float().div_(255)
    if args.limit_batches:
        images = images[: args.limit_batches * args.batch_size]
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce")
    model = VAE(model_config=config, encoder=Encoder(), decoder=Decoder())
    clock = EpochClock()
    trainer = BaseTrainer(
        model=model,
        train_dataset=BaseDataset(images, torch.zeros(len(images))),
        training_config=BaseTrainerConfig(
            output_dir=tempfile.mkdtemp(prefix="pythae-"),
            num_epochs=args.epochs,
            learning_rate=1e-3,
            per_device_train_batch_size=args.batch_size,
            no_cuda=device.type != "cuda",
            seed=args.seed,
        ),
        callbacks=[clock],
    )
    trainer.train()
    return {
        "seconds": clock.seconds,
        "images": [len(images)] * len(clock.seconds),
        "pythae": getattr(pythae, "__version__", "?"),
    }


RUNNERS = {
    "graphed-loop": run_graphed_loop,
    "examples": run_examples,
    "pythae": run_pythae,
}


def worker(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as conf/trainer/gpu.yaml sets for vae-train
        torch.cuda.reset_peak_memory_stats(device)
    result = RUNNERS.get(args.case, run_vae_train)(args, device)
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(RESULT_PREFIX + json.dumps({"case": args.case, **result}), flush=True)


# ------------------------------------------------------------------------------ driver
def worker_command(args: argparse.Namespace, case: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--worker",
        f"--case={case}",
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--epochs={args.epochs}",
        f"--limit-batches={args.limit_batches}",
        f"--device={args.device}",
        f"--precision={args.precision}",
        f"--data-root={args.data_root}",
        f"--seed={args.seed}",
    ]


def run_case(args: argparse.Namespace, case: str) -> dict[str, Any]:
    command = worker_command(args, case)
    print("$ PYTHONPATH=src python " + " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), *sys.path])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        return {"case": case, "failed": f"exit {proc.returncode}"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def seconds_per_image(result: dict[str, Any]) -> float | None:
    """Median over the epochs after the first (all of them if there is only one)."""
    if "seconds" not in result:
        return None
    pairs = list(zip(result["seconds"], result["images"], strict=True))
    pairs = pairs[1:] or pairs
    return statistics.median(seconds / max(images, 1) for seconds, images in pairs)


def environment(device: torch.device) -> list[str]:
    import lightning

    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, {platform.platform()}"
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        lines.append(
            f"device: cpu ({os.cpu_count()} cores): a smoke run, not a measurement; nothing "
            "is captured (graphed-loop eager, *-graph with model.train_step=static_eager)"
        )
    return lines


def table(results: list[dict[str, Any]]) -> str:
    floor = next((seconds_per_image(r) for r in results if r["case"] == "graphed-loop"), None)
    rows = [
        "| case | what | s/epoch | images/s | per image vs graphed-loop | GPU MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        per_image = seconds_per_image(result)
        what = CASES[result["case"]]
        if per_image is None:
            note = result.get("skipped") or result.get("failed", "")
            rows.append(f"| {result['case']} | {what} | {note} | | | |")
            continue
        epoch = statistics.median(result["seconds"][1:] or result["seconds"])
        ratio = f"{per_image / floor:.2f}" if floor else ""
        memory = result.get("cuda_max_allocated_mb")
        rows.append(
            f"| {result['case']} | {what} | {epoch:.2f} | {1 / per_image:,.0f} | {ratio} | "
            f"{'' if memory is None else f'{memory:.0f}'} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--model", default="mlp", help="the MLP cases' model= (mlp)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="per case; the first is warm-up")
    parser.add_argument("--limit-batches", type=int, default=0, help="0: whole epochs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--precision", default="auto", help="MLP cases: auto = bf16-mixed on cuda, else 32-true"
    )
    parser.add_argument("--data-root", type=Path, default=FASHION_MNIST)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.precision == "auto":
        args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: no CUDA device is visible to torch (--device cpu smokes)."
        )
    for line in environment(device):
        print(line)
    results = [run_case(args, case) for case in args.cases]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
