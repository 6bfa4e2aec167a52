"""benchmarks/quality.py: its peer recipe scores like our ELBO, and the whole script runs."""

import importlib.util
import math

import pytest
import torch

from helpers.oracles import elbo_terms
from helpers.paths import FASHION_MNIST, PROJECT_ROOT


def load_quality():
    spec = importlib.util.spec_from_file_location(
        "quality", PROJECT_ROOT / "benchmarks" / "quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_loss_on_binary_images_is_our_negative_elbo_summed_over_the_batch():
    """On 0/1 pixels the recipe's BCE + KL is exactly -ELBO: the rows' ELBOs are comparable."""
    quality = load_quality()
    torch.manual_seed(0)
    model = quality.PeerVAE()
    x = torch.bernoulli(torch.rand(16, 1, 28, 28))
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    logits = model.decode_logits(z)
    peer = quality.peer_loss(torch.sigmoid(logits), x, mu, logvar)
    ours = elbo_terms(logits, x, mu, logvar, beta=1.0)
    assert peer.item() / 16 == pytest.approx(-ours.elbo.item(), rel=1e-5)


def test_seeds_are_summarised_as_mean_and_standard_error_with_ties_within_two_se():
    quality = load_quality()

    def run(name: str, seed: int, nll: float) -> dict:
        return {
            "row": name,
            "epochs": 10,
            "seed": seed,
            "test_elbo": -nll - 5,
            "nll_iwae": nll,
            "active_units": 20,
            "latent_dim": 20,
        }

    rows = [run("mlp", 1, 100.0), run("mlp", 2, 102.0), run("mlp", 3, 104.0)]
    rows += [run("conv", 1, 97.0), run("conv", 2, 97.5), run("conv", 3, 98.0)]
    rows += [run("iwae5", 1, 90.0), run("iwae5", 2, 90.1), run("iwae5", 3, 89.9)]
    summary = {entry["row"]: entry for entry in quality.summarize(rows)}
    # mlp: mean 102, sample std 2, SE 2 / sqrt(3)
    assert summary["mlp"]["nll_iwae"] == pytest.approx(102.0)
    assert summary["mlp"]["nll_iwae_se"] == pytest.approx(2 / math.sqrt(3))
    assert summary["mlp"]["seeds"] == 3
    assert summary["iwae5"]["vs_best"] == "best"
    # conv is 7.5 behind with SE 0.29 and 0.06: far outside 2 SE
    assert summary["conv"]["vs_best"] == "+7.50"
    # Within 2 SE of the difference: tied.
    near = [run("mlp", 1, 90.0), run("mlp", 2, 91.0), run("mlp", 3, 89.5)]
    tied = {e["row"]: e for e in quality.summarize(near + rows[6:])}
    assert tied["mlp"]["vs_best"] == "tied"
    table = quality.markdown(
        {
            "settings": {
                "seeds": [1, 2, 3],
                "train_images": 1,
                "test_images": 1,
                "iwae_k": 1,
                "nll_images": 1,
                "device": "CPU",
                "torch": "x",
                "load_before": 0,
                "load_after": 0,
                "cpus": 2,
            },
            "summary": quality.summarize(rows),
        }
    )
    assert "| mlp | 10 | -107.00 ± 1.15 | 102.00 ± 1.15 | +12.00 |" in table


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason="benchmarks/quality.py reads Fashion-MNIST from Debian's dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist); it is not installed here",
)
def test_smoke_run_reports_every_row(tmp_path):
    quality = load_quality()
    results = quality.main(["--smoke", "--accelerator", "cpu", "--out", str(tmp_path)])
    rows = {(r["row"], r["epochs"]): r for r in results["rows"]}
    assert set(rows) == {(name, epochs) for name in quality.ALL_ROWS for epochs in (1, 2)}
    for row in rows.values():
        assert math.isfinite(row["test_elbo"]) and row["test_elbo"] < 0
        # nats per binary image: above 0, below twice what a uniform p(x) = 2^-784 scores
        assert 0 < row["nll_iwae"] < 784 * math.log(2) * 2
        assert 0 <= row["active_units"] <= row["latent_dim"]
    table = (tmp_path / "quality.md").read_text()
    assert table.count("\n| ") == 2 + len(results["summary"])  # header, rule, one per row
