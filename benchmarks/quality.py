"""Quality benchmark: test ELBO and importance-sampled NLL against the classic VAE recipe.

Every row trains on the same 55 000 Fashion-MNIST training images (the official training
split minus vae-train's 5000 validation images, Debian's dataset-fashion-mnist) with Adam
1e-3, batch 128, for the same epochs, and is scored on the same test images:

  peer              the pytorch/examples VAE recipe, re-implemented as a plain PyTorch loop
                    that follows it exactly: MLP 784-400-20 (ReLU, default init), BCE summed
                    on grey-level [0, 1] intensities plus the closed-form KL, Adam 1e-3,
                    batch 128;
  peer_binarized    the same loop on dynamically binarized images (a control: only the data
                    differs from ``peer``);
  mlp               vae-train model=mlp (784-400-20, Bernoulli, dynamically binarized);
  mlp_as_peer       the same with the peer's initialisation and no gradient clipping
                    (model.net.init=pytorch trainer.gradient_clip_val=null): peer_binarized
                    inside vae-lightning;
  conv              vae-train model=conv (the reference CNN, latent 32);
  iwae5             vae-train model=mlp objective=iwae objective.k=5;
  free_bits         vae-train model=mlp objective.free_bits=0.5;
  mog, vamp         model=mlp with prior=mog / prior=vamp (learned priors);
  planar, iaf       model=mlp with posterior=planar / posterior=iaf (flows);
  hvae, hvae_iwae5  model=hvae (two stochastic layers), trained on the ELBO / IWAE k=5.

Comparable numbers. ``test ELBO`` (full test split, one seeded sample per image) and
``NLL`` (the IWAE estimate with --iwae-k samples, on the first --nll-images test images) are
computed for every row the same way: Bernoulli log-likelihood of the same fixed binarization of
the test split (vae-train's data.split_seed draw). They are comparable across all rows. The
``peer native`` column is the recipe's own test loss on grey levels (BCE on intensities + KL):
not a density, so not comparable with anything else; it is reported for reference only.

Full run (GPU):              PYTHONPATH=src python benchmarks/quality.py --epochs 10 50
CPU, NLL on 1000 images:     PYTHONPATH=src python benchmarks/quality.py --epochs 10 50 \\
                                 --nll-images 1000 --accelerator cpu
                             (about 2 hours on 2 cores; the conv row is half of it)
Smoke (seconds):             PYTHONPATH=src python benchmarks/quality.py --smoke
Model families only:         PYTHONPATH=src python benchmarks/quality.py --families --epochs 10 \\
                                 --seeds 1 2 3 --nll-images 500 --iwae-k 1000
One process per seed, pooled: the same with --seeds 1 --out outputs/q1 (likewise 2 and 3),
                             then python benchmarks/quality.py --combine outputs/q \\
                                 outputs/q1/quality.json outputs/q2/quality.json ...

Seeds. ``--seeds 1 2 3`` trains every row once per seed (the seed of the run: initialisation,
shuffling, dynamic binarization; the test binarization and the evaluation samples stay fixed)
and reports each figure as mean ± standard error over the seeds. At each length, a row whose
NLL is within two standard errors of the difference from the best row's is marked tied with
it: |m - m_best| <= 2 sqrt(SE^2 + SE_best^2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import Tensor, nn

from vae_lightning.configs import CONFIG_PATH, compose_as_launched
from vae_lightning.data import MNISTDataModule
from vae_lightning.evaluate import evaluate_checkpoint
from vae_lightning.models import gaussian
from vae_lightning.models.diagnostics import active_units
from vae_lightning.models.iwae import iwae_log_likelihood
from vae_lightning.models.likelihoods import Bernoulli
from vae_lightning.train import train

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEEDS = [12345]
TIE_STANDARD_ERRORS = 2.0
OUR_ROWS = {
    "mlp": ["model=mlp"],
    "mlp_as_peer": ["model=mlp", "model.net.init=pytorch", "trainer.gradient_clip_val=null"],
    "conv": ["model=conv"],
    "iwae5": ["model=mlp", "objective=iwae", "objective.k=5"],
    "free_bits": ["model=mlp", "objective.free_bits=0.5"],
    # The model families (issue: VampPrior beats the standard prior; the two-layer VAE beats
    # one layer; the two-layer IWAE is the best row). `mlp` is the standard-prior row.
    "mog": ["model=mlp", "prior=mog"],
    "vamp": ["model=mlp", "prior=vamp"],
    "planar": ["model=mlp", "posterior=planar"],
    "iaf": ["model=mlp", "posterior=iaf"],
    "hvae": ["model=hvae"],
    "hvae_iwae5": ["model=hvae", "objective=iwae", "objective.k=5"],
}
FAMILY_ROWS = ("mlp", "mog", "vamp", "planar", "iaf", "hvae", "hvae_iwae5")
PEER_ROWS = ("peer", "peer_binarized")
ALL_ROWS = (*PEER_ROWS, *OUR_ROWS)


# ------------------------------------------------------------------ the peer recipe
class PeerVAE(nn.Module):
    """pytorch/examples vae/main.py, layer for layer (its decoder's sigmoid is in the loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h1), self.fc22(h1)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.fc4(F.relu(self.fc3(z))).view(*z.shape[:-1], 1, 28, 28)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std
        return torch.sigmoid(self.decode_logits(z)), mu, logvar


def peer_loss(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The recipe's loss_function: BCE summed over the batch plus the summed KL."""
    bce = F.binary_cross_entropy(recon_x.view(-1, 784), x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train_peer(
    images: Tensor,
    epochs: list[int],
    binarize: bool,
    device: torch.device,
    limit_batches: int | None,
    seed: int,
) -> tuple[dict[int, dict[str, Tensor]], float]:
    """The recipe's train loop; returns the weights after each epoch in ``epochs``."""
    torch.manual_seed(seed)
    model = PeerVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = images.to(device)
    snapshots, start = {}, time.perf_counter()
    for epoch in range(1, max(epochs) + 1):
        model.train()
        order = torch.randperm(len(images), device=device)
        for batch_idx, first in enumerate(range(0, len(images), 128)):
            if limit_batches is not None and batch_idx >= limit_batches:
                break
            x = images[order[first : first + 128]].float() / 255
            if binarize:
                x = torch.bernoulli(x)
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = peer_loss(recon, x, mu, logvar)
            loss.backward()
            optimizer.step()
        if epoch in epochs:
            snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return snapshots, time.perf_counter() - start


@torch.no_grad()
def evaluate_peer(
    weights: dict[str, Tensor],
    test_binary: Tensor,
    test_grey: Tensor,
    iwae_k: int,
    nll_images: int,
    device: torch.device,
) -> dict[str, float]:
    """The same metrics as vae-eval: ELBO and IWAE NLL under a Bernoulli decoder, AU."""
    model = PeerVAE().to(device)
    model.load_state_dict(weights)
    model.eval()
    bernoulli = Bernoulli()
    generator = torch.Generator(device).manual_seed(0)

    def log_px_given_z(z: Tensor, x: Tensor) -> Tensor:
        return bernoulli.log_prob(model.decode_logits(z), x)

    elbos, means, nlls, native = [], [], [], []
    for first in range(0, len(test_binary), 500):
        x = test_binary[first : first + 500].to(device).float() / 255
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=device)
        z = mu + torch.exp(0.5 * logvar) * eps
        elbos.append(log_px_given_z(z[None], x)[0] - gaussian.kl_standard_normal(mu, logvar))
        means.append(mu)
        grey = test_grey[first : first + 500].to(device).float() / 255
        recon, mu_grey, logvar_grey = model(grey)
        native.append(peer_loss(recon, grey, mu_grey, logvar_grey) / len(grey))
    for first in range(0, nll_images, 100):
        x = test_binary[first : min(first + 100, nll_images)].to(device).float() / 255
        mu, logvar = model.encode(x)
        nlls.append(-iwae_log_likelihood(x, mu, logvar, log_px_given_z, iwae_k, 16384, generator))
    return {
        "test_elbo": torch.cat(elbos).mean().item(),
        "nll_iwae": torch.cat(nlls).mean().item(),
        "active_units": active_units(torch.cat(means)),
        "latent_dim": 20,
        "peer_native_test_loss": (torch.stack(native).mean()).item(),
    }


def run_peer(
    name: str,
    args: argparse.Namespace,
    train_grey: Tensor,
    test_binary: Tensor,
    test_grey: Tensor,
    device: torch.device,
    seed: int,
) -> list[dict[str, Any]]:
    snapshots, seconds = train_peer(
        train_grey, args.epochs, name == "peer_binarized", device, args.limit_batches, seed
    )
    rows = []
    for epochs, weights in snapshots.items():
        start = time.perf_counter()
        metrics = evaluate_peer(
            weights, test_binary, test_grey, args.iwae_k, args.nll_images, device
        )
        rows.append(
            {
                "row": name,
                "epochs": epochs,
                "seed": seed,
                **metrics,
                "train_seconds_total": round(seconds, 1),
                "nll_seconds": round(time.perf_counter() - start, 1),
            }
        )
    return rows


# ------------------------------------------------------------------ vae-lightning rows
def run_ours(
    name: str, args: argparse.Namespace, out_dir: Path, datamodule: MNISTDataModule, seed: int
) -> list[dict[str, Any]]:
    run_dir = out_dir / f"{name}-seed{seed}"
    overrides = [
        *OUR_ROWS[name],
        "data=fashion_mnist",
        f"seed={seed}",
        f"trainer.max_epochs={max(args.epochs)}",
        f"trainer.accelerator={args.accelerator}",
        "+callbacks.model_checkpoint.save_top_k=-1",  # keep every epoch's checkpoint
        "~callbacks.images",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
        "test=false",
        f"paths.output_dir={run_dir}",
        f"paths.log_dir={out_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    if args.limit_batches is not None:
        overrides.append(f"+trainer.limit_train_batches={args.limit_batches}")
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose_as_launched("train", overrides)
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
    GlobalHydra.instance().clear()

    rows = []
    for epochs in args.epochs:
        ckpt = run_dir / "checkpoints" / f"epoch_{epochs - 1:03d}.ckpt"
        common = {"accelerator": args.accelerator, "progress_bar": False}
        datamodule.eval_batch_size = 1000
        full = evaluate_checkpoint(ckpt, datamodule, iwae_k=0, **common)
        datamodule.eval_batch_size = 100
        subset = evaluate_checkpoint(
            ckpt, datamodule, iwae_k=args.iwae_k, limit_batches=args.nll_images // 100, **common
        )
        rows.append(
            {
                "row": name,
                "epochs": epochs,
                "seed": seed,
                "test_elbo": full["test/elbo"],
                "nll_iwae": subset["test/nll_iwae"],
                "active_units": int(full["test/active_units"]),
                "latent_dim": latent_dim_of(ckpt),
                "train_seconds_total": round(seconds, 1),
                "nll_seconds": subset["seconds"],
                "nll_peak_memory_mb": subset["peak_memory_mb"],
            }
        )
    return rows


def latent_dim_of(ckpt: Path) -> int:
    """The size of the code whose active units are counted (a hierarchy's first layer)."""
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    return int(hparams["net"].get("z1_dim") or hparams["latent_dim"])


# ------------------------------------------------------------------ report
def mean_and_standard_error(values: list[float]) -> tuple[float, float | None]:
    """The mean, and its standard error (sample std / sqrt(n)); None for a single value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (row, epochs): mean ± SE over seeds, and how the NLL compares to the best.

    ``vs_best`` is "best", "tied" (within TIE_STANDARD_ERRORS standard errors of the
    difference) or the gap in nats; with one seed there is no SE, so only equal means tie.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["row"], row["epochs"]), []).append(row)
    summary = []
    for (name, epochs), members in groups.items():
        entry = {"row": name, "epochs": epochs, "seeds": len(members)}
        for key in ("test_elbo", "nll_iwae", "active_units"):
            entry[key], entry[f"{key}_se"] = mean_and_standard_error([m[key] for m in members])
        entry["latent_dim"] = members[0]["latent_dim"]
        if all("peer_native_test_loss" in m for m in members):
            entry["peer_native_test_loss"] = mean_and_standard_error(
                [m["peer_native_test_loss"] for m in members]
            )[0]
        summary.append(entry)
    for epochs in {entry["epochs"] for entry in summary}:
        same_length = [entry for entry in summary if entry["epochs"] == epochs]
        best = min(same_length, key=lambda entry: entry["nll_iwae"])
        for entry in same_length:
            gap = entry["nll_iwae"] - best["nll_iwae"]
            spread = math.hypot(entry["nll_iwae_se"] or 0.0, best["nll_iwae_se"] or 0.0)
            if entry is best:
                entry["vs_best"] = "best"
            elif gap <= TIE_STANDARD_ERRORS * spread:
                entry["vs_best"] = "tied"
            else:
                entry["vs_best"] = f"+{gap:.2f}"
    return sorted(summary, key=lambda e: (e["epochs"], ALL_ROWS.index(e["row"])))


def with_se(mean: float, se: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    seeds = ", ".join(str(seed) for seed in s["seeds"])
    lines = [
        f"Fashion-MNIST, {s['train_images']} training images, Adam 1e-3, batch 128, seeds "
        f"{seeds} (mean ± standard error over seeds); {s['device']} ({s['torch']}); load "
        f"average before/after {s['load_before']} / {s['load_after']} on {s['cpus']} CPUs.",
        f"Test ELBO: all {s['test_images']} test images; NLL: IWAE k={s['iwae_k']} on the first "
        f"{s['nll_images']} test images. Both under a Bernoulli decoder on the same fixed "
        "binarization: comparable across rows. Peer native: the recipe's own loss on grey "
        "levels, not comparable. vs best: the NLL gap to the best row at that length, or tied "
        f"when within {TIE_STANDARD_ERRORS:g} standard errors of the difference.",
        "",
        "| row | epochs | test ELBO | NLL (IWAE) | vs best | active units | peer native |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in results["summary"]:
        native = f"{r['peer_native_test_loss']:.2f}" if "peer_native_test_loss" in r else ""
        lines.append(
            f"| {r['row']} | {r['epochs']} | {with_se(r['test_elbo'], r['test_elbo_se'])} | "
            f"{with_se(r['nll_iwae'], r['nll_iwae_se'])} | {r['vs_best']} | "
            f"{r['active_units']:.1f}/{r['latent_dim']} | {native} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--rows", nargs="+", default=list(ALL_ROWS), choices=ALL_ROWS)
    parser.add_argument(
        "--families", action="store_true", help=f"the model-family rows: {' '.join(FAMILY_ROWS)}"
    )
    parser.add_argument("--iwae-k", type=int, default=5000)
    parser.add_argument("--nll-images", type=int, default=10000, help="multiple of 100")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--limit-batches", type=int, default=None, help="train batches/epoch")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "quality")
    parser.add_argument("--smoke", action="store_true", help="2 train batches, k=10, 100 images")
    args = parser.parse_args(argv)
    if args.families:
        args.rows = list(FAMILY_ROWS)
    if args.smoke:
        args.epochs, args.iwae_k, args.nll_images, args.limit_batches = [1, 2], 10, 100, 2
    if args.nll_images % 100:
        parser.error("--nll-images must be a multiple of 100 (the evaluation batch size)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    datamodule = MNISTDataModule(
        dataset="fashion_mnist",
        root=str(PROJECT_ROOT / "data"),
        search_dirs=["/usr/share/datasets/fashion-mnist"],
        download=False,
    )
    datamodule.setup()
    train_grey, _ = datamodule.splits["train"]
    test_binary, _ = datamodule.splits["test"]  # the fixed draw every row is scored on
    test_grey, _ = datamodule.load_split("test")
    device = torch.device(
        "cuda" if args.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    )
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        L.seed_everything(seed, verbose=False)
        for name in args.rows:
            print(f"[quality] {name}, seed {seed} ...", file=sys.stderr, flush=True)
            if name in PEER_ROWS:
                rows.extend(run_peer(name, args, train_grey, test_binary, test_grey, device, seed))
            else:
                rows.extend(run_ours(name, args, args.out, datamodule, seed))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    results = {
        "settings": {
            "epochs": args.epochs,
            "seeds": args.seeds,
            "iwae_k": args.iwae_k,
            "nll_images": args.nll_images,
            "train_images": len(train_grey),
            "test_images": len(test_binary),
            "limit_batches": args.limit_batches,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": round(load_before, 1),
            "load_after": round(os.getloadavg()[0], 1),
        },
        "rows": sorted(rows, key=lambda r: (r["epochs"], ALL_ROWS.index(r["row"]), r["seed"])),
        "summary": summarize(rows),
    }
    (args.out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "quality.md").write_text(table)
    print(table)
    return results


def combine(paths: list[Path], out: Path) -> dict[str, Any]:
    """One table from several runs of this script (e.g. one process per seed, run side by
    side): their rows pooled, summarised again; settings from the first, seeds from all."""
    runs = [json.loads(path.read_text()) for path in paths]
    rows = [row for run in runs for row in run["rows"]]
    settings = dict(runs[0]["settings"], seeds=sorted({row["seed"] for row in rows}))
    settings["load_after"] = max(run["settings"]["load_after"] for run in runs)
    results = {"settings": settings, "rows": rows, "summary": summarize(rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "quality.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--combine"]:  # --combine OUT RUN.json ...
        combine([Path(path) for path in sys.argv[3:]], Path(sys.argv[2]))
    else:
        main()
