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
    assert table.count("\n| ") == 2 + len(rows)  # header, rule, one line per row
