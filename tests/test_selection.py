"""Model selection: every run is ranked on the best validation value of its objective's own
bound (val/bound), the same epoch the checkpoint callback keeps and tests."""

import torch

from helpers.events import scalar_series
from vae_lightning.models import mlp_vae
from vae_lightning.models.iwae import iwae_bound, log_importance_weights
from vae_lightning.models.likelihoods import Bernoulli
from vae_lightning.models.objectives import ELBO, IWAE, decoder_log_likelihood
from vae_lightning.train import optimized_value, train


def test_the_bound_is_the_elbo_for_elbo_and_iwae_k_at_full_weight_for_iwae():
    torch.manual_seed(0)
    net, likelihood = mlp_vae((1, 28, 28), latent_dim=4, hidden_dims=[16]), Bernoulli()
    x = torch.bernoulli(torch.rand(8, 1, 28, 28))
    elbo = ELBO(kl_warmup_steps=10)(net, likelihood, x, kl_weight=0.3)
    assert torch.equal(elbo.bound, elbo.elbo)
    posterior = net.encode(x)
    torch.manual_seed(1)
    warm = IWAE(k=7)(net, likelihood, x, kl_weight=0.3, posterior=posterior)
    torch.manual_seed(1)
    log_px, ratio = log_importance_weights(
        x, *posterior, lambda z, x_: decoder_log_likelihood(net, likelihood, z, x_), 7
    )
    # The warm-up weight shapes the loss only; the bound is IWAE_k of the true weights.
    torch.testing.assert_close(warm.bound, iwae_bound(log_px + ratio).mean())
    torch.testing.assert_close(warm.loss, -iwae_bound(log_px + 0.3 * ratio).mean())


def test_an_iwae_run_is_selected_on_the_best_val_iwae_bound(compose_train, tmp_path):
    cfg = compose_train(
        [
            "debug=fast",
            "trainer.max_epochs=3",
            "objective=iwae",
            "objective.k=3",
            "test_iwae_k=0",
            "report=false",
            "~callbacks.progress_bar",
        ]
    )
    metrics = train(cfg)
    steps, bounds = zip(*scalar_series(tmp_path, "val/bound"), strict=True)
    elbos = [value for _, value in scalar_series(tmp_path, "val/elbo")]
    assert len(bounds) == 3
    assert all(b > e for b, e in zip(bounds, elbos, strict=True))  # IWAE_3 above the ELBO
    assert metrics["best/val/bound"] == max(bounds)
    assert optimized_value(cfg, metrics) == max(bounds)  # what the sweeper ranks by
    # The checkpoint that is kept, and tested, is that epoch's.
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    best_step = torch.load(best, weights_only=True)["global_step"]
    assert steps[bounds.index(max(bounds))] == best_step - 1
    # The best value is written for TensorBoard's HParams tab and the sweep report.
    assert [value for _, value in scalar_series(tmp_path, "best/val/bound")] == [max(bounds)]
