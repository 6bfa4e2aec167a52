"""Checkpoints written by earlier versions still load and compute the same numbers."""

import json

import torch

from helpers.paths import FIXTURES
from vae_lightning.lit_module import VAELitModule


def test_v0_1_checkpoint_loads_alone_and_reproduces_its_numbers():
    """tests/fixtures/checkpoint_v0_1_mlp.ckpt was written by v0.1's main (a small MLP after
    4 steps of `debug=fast`, before this refactor); the .json holds what it computed then."""
    expected = json.loads((FIXTURES / "checkpoint_v0_1_mlp.json").read_text())
    module = VAELitModule.load_from_checkpoint(FIXTURES / "checkpoint_v0_1_mlp.ckpt")
    module.eval()
    x = torch.linspace(0, 1, 784).reshape(1, 1, 28, 28)
    with torch.no_grad():
        mu, logvar = module.net.encode(x)
        logits = module.net.decode(mu)
    torch.testing.assert_close(mu[0], torch.tensor(expected["mu"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(logvar[0], torch.tensor(expected["logvar"]), rtol=0, atol=1e-5)
    assert abs(logits.sum().item() - expected["logits_sum"]) <= 1e-5
    saved = torch.load(FIXTURES / "checkpoint_v0_1_mlp.ckpt", weights_only=True)
    assert saved["global_step"] == expected["global_step"]
