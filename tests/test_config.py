"""Every config group option composes and instantiates; bad overrides fail clearly."""

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from helpers.paths import CONF_DIR
from helpers.runs import compose_data_option, output_overrides
from vae_lightning.config_checks import ConfigError, check_config
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import TensorImageDataModule
from vae_lightning.lit_module import VAELitModule
from vae_lightning.train import checked_model, instantiate_named


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_hold_the_documented_options():
    assert options("model") == ["conv", "cvae", "hvae", "mlp", "resnet"]
    assert options("data") == [
        "celeba",
        "cifar10",
        "dsprites",
        "fashion_mnist",
        "image_folder",
        "mnist",
    ]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert {"cpu", "ddp", "default", "gpu"} <= set(options("trainer"))
    assert options("debug") == ["fast"]
    assert options("prior") == ["mog", "standard", "vamp"]
    assert options("posterior") == ["gaussian", "iaf", "planar"]
    assert options("likelihood") == [
        "bernoulli",
        "continuous_bernoulli",
        "discretized_logistic",
        "gaussian",
    ]
    assert options("objective") == ["beta_tc", "capacity", "elbo", "iwae"]


@pytest.mark.parametrize(
    ("likelihood", "binarize"),
    [
        ("bernoulli", "dynamic"),
        ("continuous_bernoulli", "none"),
        ("discretized_logistic", "none"),
        ("gaussian", "none"),
    ],
)
@pytest.mark.parametrize("objective", options("objective"))
def test_likelihood_and_objective_instantiate(compose_train, likelihood, binarize, objective):
    cfg = compose_train([f"likelihood={likelihood}", f"objective={objective}"])
    assert cfg.data.binarize == binarize  # each likelihood gets the data it is a density of
    module = instantiate(
        cfg.model, optimizer=cfg.optimizer, likelihood=cfg.likelihood, objective=cfg.objective
    )
    assert type(module.hparams["likelihood"]) is dict and type(module.hparams["objective"]) is dict
    x = torch.rand(2, 1, 28, 28)
    terms = module.objective(module.net, module.likelihood, x, kl_weight=1.0)
    assert torch.isfinite(torch.stack(list(terms.by_name().values()))).all()
    assert set(terms.extras) == set(module.objective.extra_terms)
    assert module.decode_mean(torch.zeros(3, 20)).shape == (3, 1, 28, 28)


def test_likelihood_data_mismatch_warns(compose_train):
    cfg = compose_train(["likelihood=gaussian", "data.binarize=dynamic"])
    with pytest.warns(UserWarning, match="unbounded"):
        check_config(cfg)  # a warning, not an error: such a run trains
    cfg = compose_train(["data.binarize=none"])
    with pytest.warns(UserWarning, match="not a normalised likelihood"):
        check_config(cfg)


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_model_and_optimizer_instantiate(compose_train, model, optimizer):
    cfg = compose_train([f"model={model}", f"optimizer={optimizer}", "model.latent_dim=7"])
    module = instantiate(cfg.model, optimizer=cfg.optimizer)
    assert isinstance(module, VAELitModule)
    assert module.net.latent_dim == 7
    opt = module.configure_optimizers()
    assert type(opt).__name__.lower() == optimizer
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    # Hyperparameters are plain data: nothing that weights_only loading would refuse.
    assert type(module.hparams["net"]) is dict and type(module.hparams["optimizer"]) is dict


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(compose_train, tmp_path, data):
    required = [f"data.root={tmp_path}"] if data == "image_folder" else []  # root: ???
    cfg = compose_data_option(tmp_path, data, required)
    dm = instantiate(cfg.data)
    assert isinstance(dm, TensorImageDataModule)
    assert dm.dataset == data


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp"])
def test_trainer_options_compose(compose_train, trainer):
    cfg = compose_train([f"trainer={trainer}"])
    assert cfg.trainer.gradient_clip_val is None  # measured best (benchmarks/RESULTS.md)
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_defaults_are_the_measured_best_and_the_reference_design_is_an_experiment(
    compose_train, model
):
    """Defaults: PyTorch's layer init and no clipping (the classic recipe's, 0.5-0.8 nats
    better early on); the reference design's Xavier + clip 30 is experiment=reference_*."""
    default = compose_train([f"model={model}"])
    assert default.model.net.init == "pytorch" and default.trainer.gradient_clip_val is None
    reference = compose_train([f"experiment=reference_{model}"])
    assert reference.model.net.init == "xavier" and reference.trainer.gradient_clip_val == 30
    assert reference.model.net._target_ == default.model.net._target_


def test_callbacks_and_logger_instantiate(compose_train):
    cfg = compose_train()
    names = {type(c).__name__ for c in instantiate_named(cfg.callbacks)}
    assert {"RunDirCheckpoint", "ReconstructionsAndSamples", "RichProgressBar"} <= names
    assert [type(x).__name__ for x in instantiate_named(cfg.logger)] == ["TensorBoardLogger"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(compose_train, tmp_path, experiment):
    # Each as it ships: an experiment may bring its own data (dsprites_beta: 64x64 dSprites).
    cfg = compose_as_launched("train", [f"experiment={experiment}", *output_overrides(tmp_path)])
    module = checked_model(cfg)  # every group of the experiment, checked as vae-train does
    images = torch.rand(2, *cfg.data.image_shape)
    assert torch.isfinite(module(images).logits).all()


def test_debug_fast_is_short(compose_train):
    cfg = compose_train(["debug=fast"])
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches <= 10


def test_unknown_option_lists_the_available_ones(compose_train):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(["model=transformer"])
    assert "Could not find 'model/transformer'" in str(info.value)
    assert "conv" in str(info.value) and "mlp" in str(info.value)


def test_misspelt_key_is_rejected(compose_train):
    with pytest.raises(ConfigCompositionException, match="latnt_dim"):
        compose_train(["model.latnt_dim=8"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["objective=iwae", "objective.k=0"], r"objective.k=0 is invalid"),
        (["objective.free_bits=-1"], r"objective.free_bits=-1 is invalid"),
        (["objective=beta_tc", "objective.beta=-6"], r"objective.beta=-6 is invalid"),
        (
            ["objective=beta_tc", "objective.estimator=mss"],
            r"'mss' is invalid: it should be 'mws' or 'stratified'",
        ),
        (["objective=capacity", "objective.capacity_steps=-1"], r"capacity_steps=-1 is invalid"),
        (["test_iwae_k=-5"], r"test_iwae_k=-5 is invalid"),
        (["likelihood=gaussian", "likelihood.variance=per_image"], r"'fixed' or 'learned'"),
        # Cross-key: reported by the objective itself, as a config error.
        (["objective.cycle_steps=100"], r"objective: .*kl_warmup_steps=50"),
        (["likelihood=gaussian", "likelihood.std=0.001"], r"likelihood: .*min_std"),
    ],
)
def test_bad_likelihood_and_objective_settings_fail_before_training(
    compose_train, overrides, match
):
    with pytest.raises(ConfigError, match=match):
        check_config(compose_train(overrides))
