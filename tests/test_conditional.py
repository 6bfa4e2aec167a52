"""model=cvae, the conditional VAE: its bounds on log p(x|y) against a hand computation, the
per-class pictures read back from real event files, the config rules through real
composition, and a real training run reloaded and evaluated by vae-eval."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor, nn
from torch.distributions import Bernoulli, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

from helpers.events import event_folder, scalars, written_images
from helpers.paths import CONF_DIR
from helpers.runs import TrainedRun, train_run
from vae_lightning.callbacks import (
    LatentInterpolations,
    LatentTraversals,
    ReconstructionsAndSamples,
)
from vae_lightning.config_checks import check_config
from vae_lightning.config_rules import builds_conditional
from vae_lightning.configs import compose_as_launched
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import evaluate
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.conditional import (
    ConditionalVAE,
    conv_cvae,
    mlp_cvae,
    reads_encoder,
)
from vae_lightning.models.likelihoods import Bernoulli as BernoulliLikelihood
from vae_lightning.models.objectives import ELBO, IWAE, decoder_log_likelihood
from vae_lightning.models.priors import Prior, StandardNormal
from vae_lightning.models.vae import mlp_vae

CLASSES = 10
TILE = 30  # make_grid: 28-pixel tiles with 2 pixels of padding


# ------------------------------------------------------------------ the maths
def tiny_cvae() -> ConditionalVAE:
    torch.manual_seed(0)
    return mlp_cvae([1, 28, 28], latent_dim=3, num_classes=CLASSES, hidden_dims=[7]).double()


def batch() -> tuple[Tensor, Tensor]:
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    return x, torch.tensor([0, 3, 3, 9])


def by_hand_posterior(net: ConditionalVAE, x: Tensor, y: Tensor) -> Normal:
    """q(z|x, y): the encoder's layers applied to the flattened image joined to the one-hot."""
    joined = torch.cat([x.flatten(1), F.one_hot(y, CLASSES).double()], dim=1)
    hidden = torch.relu(net.encoder.body[1](joined))
    mu, logvar = net.encoder.head.mu(hidden), net.encoder.head.logvar(hidden)
    return Normal(mu, torch.exp(0.5 * logvar))


def by_hand_log_px(net: ConditionalVAE, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """log p(x|z, y) summed over pixels, z (..., B, D) -> (..., B)."""
    one_hot = F.one_hot(y, CLASSES).double().expand(*z.shape[:-1], CLASSES)
    logits = net.decoder(torch.cat([z, one_hot], dim=-1).flatten(0, -2))
    logits = logits.unflatten(0, z.shape[:-1])
    return Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))


def test_elbo_terms_are_those_of_log_p_x_given_y_by_hand():
    net, (x, y) = tiny_cvae(), batch()
    torch.manual_seed(5)
    terms = ELBO()(net, BernoulliLikelihood(), x, 1.0, labels=y)
    q = by_hand_posterior(net, x, y)
    torch.manual_seed(5)  # the same one draw per image
    z = q.loc + q.scale * torch.randn_like(q.loc)
    rec = -by_hand_log_px(net, z, x, y).mean()
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(terms.rec.double(), rec, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(terms.kl.double(), kl)
    torch.testing.assert_close(terms.elbo.double(), -(rec + kl), rtol=1e-6, atol=1e-5)
    # The label matters: the same images with other labels give another bound.
    other = ELBO()(net, BernoulliLikelihood(), x, 1.0, labels=(y + 1) % CLASSES)
    assert not torch.isclose(other.kl, terms.kl)


def test_iwae_bound_is_that_of_log_p_x_given_y_by_hand():
    net, (x, y) = tiny_cvae(), batch()
    k = 3
    torch.manual_seed(7)
    terms = IWAE(k=k)(net, BernoulliLikelihood(), x, 1.0, labels=y)
    q = by_hand_posterior(net, x, y)
    torch.manual_seed(7)
    z = q.loc + q.scale * torch.randn(k, *q.loc.shape, dtype=torch.float64)
    log_w = (
        by_hand_log_px(net, z, x, y) + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    )
    bound = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
    torch.testing.assert_close(terms.bound.double(), bound, rtol=1e-6, atol=1e-5)


def test_decoder_log_likelihood_repeats_the_labels_for_each_sample():
    net, (x, y) = tiny_cvae(), batch()
    z = torch.randn(5, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        decoder_log_likelihood(net, BernoulliLikelihood(), z, x, y).double(),
        by_hand_log_px(net, z, x, y),
        rtol=1e-6,
        atol=1e-5,
    )


def test_labels_are_required_and_the_conv_body_takes_label_planes():
    net = tiny_cvae()
    with pytest.raises(ValueError, match="needs the class labels"):
        net.encode(batch()[0])
    conv = conv_cvae([1, 28, 28], latent_dim=4, num_classes=CLASSES)
    assert conv.encoder.features[0][0].in_channels == 1 + CLASSES
    out = conv(torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
    assert out.logits.shape == (2, 1, 28, 28)


class PseudoInputPrior(StandardNormal):
    """A prior defined through the encoder, as the VampPrior is (it keeps the encoder)."""

    def bind(self, encoder: nn.Module) -> None:
        self.encoders = [encoder]


def test_factories_declare_whether_they_build_a_conditional_network():
    assert builds_conditional(mlp_cvae) and builds_conditional(conv_cvae)
    assert not builds_conditional(mlp_vae)
    assert reads_encoder(PseudoInputPrior) and not reads_encoder(StandardNormal)
    assert not reads_encoder(Prior)
    with pytest.raises(ValueError, match="no label"):
        mlp_cvae([1, 28, 28], prior=PseudoInputPrior(20))


# ------------------------------------------------------------------ the config rules
@pytest.mark.parametrize("unlabelled", ["data.num_classes=0", "~data.num_classes"])
def test_cvae_on_data_without_labels_is_refused_before_training(compose_train, unlabelled):
    with pytest.raises(ConfigError) as err:
        check_config(compose_train(["model=cvae", unlabelled]))
    message = str(err.value)
    assert "model=cvae conditions on the class labels, but data=mnist has none" in message
    assert message.count("\n  - ") == 1  # one problem, not the signature's too
    with pytest.raises(ConfigError, match="model.net.num_classes=5 but the data's labels"):
        check_config(compose_train(["model=cvae", "model.net.num_classes=5"]))
    check_config(compose_train(["model=mlp", "data.num_classes=0"]))  # fine unconditioned
    check_config(compose_train(["model=cvae", "data=fashion_mnist"]))


def test_cvae_with_a_prior_that_reads_the_encoder_is_refused(compose_train):
    cfg = compose_train(["model=cvae", f"prior._target_={__name__}.PseudoInputPrior"])
    with pytest.raises(ConfigError, match="no label for a conditional encoder"):
        check_config(cfg)
    check_config(compose_train(["model=mlp", f"prior._target_={__name__}.PseudoInputPrior"]))


# ------------------------------------------------------------------ the pictures
class LabelOnlyDecoder(nn.Module):
    """Ignores z: every pixel's logit is that of the class (its one-hot, the last inputs), so
    the mean image of class c is sigmoid(LOGITS[c]) everywhere."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("class_logits", torch.linspace(-3.0, 3.0, CLASSES))

    def forward(self, joined: Tensor) -> Tensor:
        logit = joined[:, self.latent_dim :] @ self.class_logits
        return logit[:, None, None, None].expand(-1, 1, 28, 28)


def label_only_module() -> VAELitModule:
    module = VAELitModule(
        net={
            "_target_": "vae_lightning.models.conditional.mlp_cvae",
            "image_shape": [1, 28, 28],
            "num_classes": CLASSES,
            "hidden_dims": [8],
        },
        optimizer={"_target_": "torch.optim.Adam"},
        latent_dim=3,
    )
    module.net.decoder = LabelOnlyDecoder(3)
    return module


def shade(soft_label: Tensor) -> int:
    """The grey level TensorBoard stores for a (soft) label under LabelOnlyDecoder."""
    logit = soft_label.float() @ torch.linspace(-3.0, 3.0, CLASSES)
    return int(torch.sigmoid(logit) * 255)


def grid_of(log_dir: Path, tag: str) -> np.ndarray:
    (event,) = written_images(log_dir, tag)
    png = event.encoded_image_string
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[..., 0]


def tile_value(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = 2 + row * TILE, 2 + col * TILE
    return grid[top : top + 28, left : left + 28]


def test_pictures_of_a_conditional_net_use_the_labels(tmp_path):
    labels = torch.tensor([4, 7, 0, 9, 2, 2, 5, 1])
    images = torch.rand(8, 1, 28, 28).round()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="", version="", default_hp_metric=False),
        callbacks=[
            ReconstructionsAndSamples(num_images=4, samples_per_class=3),
            LatentInterpolations(num_pairs=2, num_steps=3),
            LatentTraversals(num_dims=2, num_steps=4, num_images=8, image_index=1),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.validate(label_only_module(), DataLoader(TensorDataset(images, labels), batch_size=8))
    one_hot = F.one_hot(labels, CLASSES).float()

    samples = grid_of(tmp_path, "val/samples")
    assert samples.shape == (2 + CLASSES * TILE, 2 + 3 * TILE)  # one row per class
    for row in range(CLASSES):
        for col in range(3):
            assert (tile_value(samples, row, col) == shade(F.one_hot(torch.tensor(row), 10))).all()

    reconstructions = grid_of(tmp_path, "val/reconstructions")
    for col in range(4):  # the bottom row: each image decoded with its own label
        assert (tile_value(reconstructions, 1, col) == shade(one_hot[col])).all()

    interpolations = grid_of(tmp_path, "val/interpolations")
    for pair in range(2):  # the label mixed as the code: a's, half-half, b's
        a, b = one_hot[2 * pair], one_hot[2 * pair + 1]
        for step, w in enumerate([0.0, 0.5, 1.0]):
            expected = shade((1 - w) * a + w * b)
            assert (tile_value(interpolations, pair, 1 + step) == expected).all()

    traversals = grid_of(tmp_path, "val/traversals")  # the centre image's label (index 1)
    assert (traversals[2:-2:TILE, 2:-2:TILE] == shade(one_hot[1])).all()


# ------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory, idx_root) -> TrainedRun:
    return train_run(
        tmp_path_factory.mktemp("cvae_run"),
        idx_root,
        [
            "model=cvae",
            "debug=fast",
            "trainer.limit_train_batches=2",
            "~callbacks.progress_bar",
            "~callbacks.latent_space",
            "model.latent_dim=4",
            "callbacks.images.samples_per_class=5",
            "callbacks.traversals.num_images=50",
            "callbacks.posterior_collapse.num_images=50",
        ],
    )


def test_a_cvae_trains_logs_a_row_per_class_and_reloads(cvae_run):
    logged = scalars(cvae_run.dir)
    assert math.isfinite(logged["val/elbo"][-1]) and math.isfinite(logged["test/nll_iwae"][-1])
    (event,) = written_images(event_folder(cvae_run.dir / "tensorboard"), "val/samples")
    assert (event.height, event.width) == (2 + CLASSES * TILE, 2 + 5 * TILE)

    (ckpt,) = (cvae_run.dir / "checkpoints").glob("epoch_*.ckpt")
    module = VAELitModule.load_from_checkpoint(ckpt)
    assert isinstance(module.net, ConditionalVAE) and module.net.num_classes == CLASSES
    x, y = torch.zeros(2, 1, 28, 28), torch.tensor([3, 8])
    images = module.decode_mean(module.net.sample_prior(2), y)
    assert images.shape == (2, 1, 28, 28)
    assert module.net.encode(x, y)[0].shape == (2, 4)


def test_vae_eval_reports_log_p_x_given_y(cvae_run, tmp_path, capsys):
    (ckpt,) = (cvae_run.dir / "checkpoints").glob("epoch_*.ckpt")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        results = evaluate(
            compose_as_launched(
                "eval",
                [
                    f"ckpt_path={ckpt}",
                    f"paths.output_dir={tmp_path}",
                    f"paths.log_dir={tmp_path}",
                    "eval.progress_bar=false",
                    f"eval.iwae_k={cvae_run.cfg.test_iwae_k}",  # as the run's test
                    "eval.batch_size=1000",
                ],
            )
        )
    GlobalHydra.instance().clear()
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["conditional_on"] == "label" == results["conditional_on"]
    (logged,) = scalars(cvae_run.dir)["test/nll_iwae"]  # the same estimate after training
    assert written["test/nll_iwae"] == pytest.approx(logged, abs=1e-4)
    table = capsys.readouterr().out
    assert "-log p(x|y)" in table and "conditional on the label" in table
