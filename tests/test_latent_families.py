"""The learned priors and flow posteriors end to end: real composition, real train() runs on
generated IDX data (every visual callback on), the test metrics, vae-eval and the HParams
tab, and the combinations and values that are refused before training."""

import math

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers.events import hparams_session_groups, image_tags, scalars
from helpers.paths import CONF_DIR
from helpers.runs import train_run
from vae_lightning.config_checks import check_config
from vae_lightning.configs import compose_as_launched
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import evaluate
from vae_lightning.models.flows import InverseAutoregressiveFlow, PlanarFlow
from vae_lightning.models.likelihoods import Bernoulli
from vae_lightning.models.objectives import ELBO
from vae_lightning.models.priors import MixtureOfGaussians, VampPrior
from vae_lightning.models.vae import mlp_vae
from vae_lightning.train import train

TINY_RUN = [
    "debug=fast",
    "~callbacks.progress_bar",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "test_iwae_k=3",
    "model.latent_dim=3",
    "model.net.hidden_dims=[32]",
    "callbacks.traversals.num_images=50",
    "callbacks.posterior_collapse.num_images=50",
    "callbacks.latent_space.num_images=50",
]
FAMILIES = {
    "mog": ["prior=mog", "prior.num_components=4"],
    "vamp": ["prior=vamp", "prior.num_components=7"],
    "planar": ["posterior=planar", "posterior.num_flows=2"],
    "iaf": ["posterior=iaf", "posterior.num_flows=2", "posterior.hidden_dim=16"],
    "vamp+iaf+iwae": [
        "prior=vamp",
        "prior.num_components=7",
        "posterior=iaf",
        "posterior.num_flows=2",
        "posterior.hidden_dim=16",
        "objective=iwae",
        "objective.k=3",
    ],
}


@pytest.mark.parametrize(
    "parts",
    [
        {"prior": MixtureOfGaussians(3, 4)},
        {"prior": VampPrior(3, (1, 28, 28), 5)},
        {"posterior": PlanarFlow(3, 2)},
        {"posterior": InverseAutoregressiveFlow(3, 2, 8)},
    ],
    ids=["mog", "vamp", "planar", "iaf"],
)
def test_the_elbo_decodes_one_draw_and_estimates_the_kl_at_it(parts):
    """Without a closed-form KL: one decoder pass per step (no wasted forward), and the terms
    are log p(x|z), log q(z|x) - log p(z) at that one draw."""
    net, x = mlp_vae((1, 28, 28), 3, hidden_dims=(16,), **parts), torch.rand(6, 1, 28, 28)
    decoded = []
    net.decoder.register_forward_hook(lambda module, args, out: decoded.append(len(out)))
    torch.manual_seed(0)
    terms = ELBO()(net, Bernoulli(), x, kl_weight=1.0)
    assert decoded == [6]
    torch.manual_seed(0)
    draws = net.draw_latents(*net.encode(x), 1)
    rec = -Bernoulli().log_prob(net.decode(draws.z[0]), x).mean()
    torch.testing.assert_close(terms.rec, rec)
    torch.testing.assert_close(terms.kl, (draws.log_q - draws.log_p)[0].mean())


@pytest.fixture(scope="module")
def family_run(tmp_path_factory, idx_root):
    """The tiny run of a family by name, trained once per module."""
    runs = {}

    def _run(name: str):
        if name not in runs:
            overrides = [*TINY_RUN, *FAMILIES[name]]
            runs[name] = train_run(tmp_path_factory.mktemp("family"), idx_root, overrides)
        return runs[name]

    return _run


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_tests_and_draws_its_pictures(family_run, name):
    run = family_run(name)
    logged = scalars(run.dir)
    for tag in ("train/loss", "val/elbo", "val/kl", "test/elbo", "test/nll_iwae"):
        assert tag in logged and all(math.isfinite(v) for v in logged[tag]), (name, tag)
    # The IWAE_3 estimate of log p(x) is at least the single-sample ELBO on average; on one
    # batch of 3 draws it can be a bit below, but not by much.
    assert -logged["test/nll_iwae"][-1] > logged["test/elbo"][-1] - 50
    assert {"val/samples", "val/reconstructions", "val/traversals"} <= image_tags(run.dir)
    assert len(list((run.dir / "checkpoints").glob("*.ckpt"))) >= 1


def test_vae_eval_evaluates_a_family_checkpoint(family_run, tmp_path):
    run = family_run("vamp+iaf+iwae")
    ckpt = next((run.dir / "checkpoints").glob("epoch_*.ckpt"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        report = evaluate(
            compose_as_launched(
                "eval",
                [
                    f"paths.output_dir={tmp_path}",
                    f"paths.log_dir={tmp_path}",
                    "eval.progress_bar=false",
                    f"ckpt_path={ckpt}",
                    "eval.iwae_k=4",
                    "eval.limit_batches=1",
                ],
            )
        )
    GlobalHydra.instance().clear()
    assert report["prior"] == "VampPrior"
    assert report["posterior"] == "InverseAutoregressiveFlow"
    assert report["kl_estimator"] == "monte_carlo"
    assert math.isfinite(report["test/nll_iwae"])


def test_hparams_tab_lists_the_new_keys(family_run):
    run = family_run("vamp+iaf+iwae")
    (group,) = hparams_session_groups(run.dir / "tensorboard")
    hparams = {
        key: value.number_value if value.HasField("number_value") else value.string_value
        for key, value in group.hparams.items()
    }
    assert hparams["prior"] == "vamp" and hparams["posterior"] == "iaf"
    assert hparams["prior.num_components"] == 7
    assert hparams["posterior.num_flows"] == 2


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["prior=mog", "prior.num_components=0"], "prior.num_components=0 is invalid"),
        (["prior=vamp", "prior.num_components=0"], "prior.num_components=0 is invalid"),
        (["posterior=planar", "posterior.num_flows=-1"], "posterior.num_flows=-1 is invalid"),
        (["posterior=iaf", "posterior.num_flows=-1"], "posterior.num_flows=-1 is invalid"),
    ],
)
def test_bad_sizes_are_named_before_training(compose_train, overrides, named):
    with pytest.raises(ConfigError) as info:
        check_config(compose_train(overrides))
    assert named in str(info.value)
    assert str(info.value).count("\n  - ") == 1


@pytest.mark.parametrize("option", ["prior=standard", *(o[0] for o in FAMILIES.values())])
def test_every_new_option_passes_the_check(compose_train, option):
    check_config(compose_train([option]))


@pytest.mark.parametrize(
    "option", ["prior=mog", "prior=vamp", "posterior=planar", "posterior=iaf"]
)
def test_free_bits_with_a_flow_or_a_learned_prior_is_refused_before_training(
    compose_train, option, tmp_path
):
    with pytest.raises(ConfigError) as info:
        train(compose_train([option, "objective.free_bits=0.5", "model.latent_dim=3"]))
    message = str(info.value)
    assert option in message and "do not combine" in message
    assert "objective.free_bits needs the KL of each latent dimension in closed form" in message
    assert not (tmp_path / "checkpoints").exists()
