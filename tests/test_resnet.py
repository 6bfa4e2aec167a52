"""model=resnet and model=conv on 28, 32 and 64 px images of 1 or 3 channels: shapes,
gradients, a real training run, checkpoint reload, and the shape-mismatch config errors."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from helpers.runs import train_run
from vae_lightning.errors import ConfigError
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models import conv_vae, resnet_vae
from vae_lightning.models.stages import stage_sizes, transposed_output_padding
from vae_lightning.train import train

FACTORIES = {"conv": conv_vae, "resnet": resnet_vae}
SHAPES = [(c, s, s) for s in (28, 32, 64) for c in (1, 3)] + [(3, 48, 40)]
# The smallest widths that still have every kind of block: fast, and the same code paths.
SMALL = {
    "conv": {"channels": [4, 8, 8]},
    "resnet": {"channels": [8, 8, 16], "blocks_per_stage": 2},
}
TINY_RESNET = ["model=resnet", "model.net.channels=[8,16]", "model.net.blocks_per_stage=1"]


@pytest.mark.parametrize("image_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("output_channels", [None, 2, 9])
@pytest.mark.parametrize("model", FACTORIES)
def test_decoder_gives_the_image_size_with_any_output_channels(
    model, image_shape, output_channels
):
    vae = FACTORIES[model](
        image_shape, latent_dim=6, output_channels=output_channels, **SMALL[model]
    )
    x = torch.rand(2, *image_shape)
    out = vae(x)
    assert out.logits.shape == (2, output_channels or image_shape[0], *image_shape[1:])
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 6)
    assert vae.decode(torch.randn(3, 6)).shape == (3, *out.logits.shape[1:])


@pytest.mark.parametrize("model", FACTORIES)
def test_default_widths_on_64px_colour_images(model):
    vae = FACTORIES[model]((3, 64, 64))
    assert vae(torch.rand(2, 3, 64, 64)).logits.shape == (2, 3, 64, 64)


def test_stage_sizes_round_up_and_the_transposed_convs_walk_them_back():
    assert stage_sizes((1, 28, 28), 3) == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert stage_sizes((3, 64, 40), 3) == [(64, 40), (32, 20), (16, 10), (8, 5)]
    for smaller, larger in [((4, 4), (7, 7)), ((7, 5), (14, 10)), ((8, 8), (16, 16))]:
        padding = transposed_output_padding(smaller, larger)
        up = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=padding)
        assert up(torch.zeros(1, 1, *smaller)).shape[2:] == larger


def test_resnet_deepest_map_and_stage_widths():
    vae = resnet_vae((3, 28, 28), channels=[32, 64, 128, 256], blocks_per_stage=2)
    assert vae.decoder.seed_shape == (256, 4, 4)  # 28 -> 14 -> 7 -> 4: three halvings
    convs = [m for m in vae.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs].count(2) == 2 * 3  # branch and shortcut per halving
    assert any(isinstance(m, nn.GroupNorm) for m in vae.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vae.modules())


def test_resnet_output_of_one_image_does_not_depend_on_its_batch():
    """GroupNorm: the same image gives the same posterior alone or among others, in train
    mode too (BatchNorm would not)."""
    torch.manual_seed(0)
    vae = resnet_vae((3, 32, 32), **SMALL["resnet"]).train()
    x = torch.rand(4, 3, 32, 32)
    mu_alone, _ = vae.encode(x[:1])
    mu_batch, _ = vae.encode(x)
    torch.testing.assert_close(mu_alone, mu_batch[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", FACTORIES)
def test_every_parameter_gets_a_gradient(model):
    torch.manual_seed(0)
    vae = FACTORIES[model]((3, 28, 28), latent_dim=4, **SMALL[model])
    out = vae(torch.rand(3, 3, 28, 28))
    (out.logits.square().mean() + out.mu.square().mean() + out.logvar.mean()).backward()
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("model", FACTORIES)
def test_images_too_small_for_the_stages_are_refused_with_both_sizes(model):
    with pytest.raises(ValueError, match=r"at least 4x4 pixels, but image_shape=\[1, 3, 32\]"):
        FACTORIES[model]((1, 3, 32), channels=[8, 8, 8][: 2 if model == "conv" else 3])


def test_resnet_trains_and_its_checkpoint_reloads_alone(tmp_path, idx_root):
    run = train_run(
        tmp_path,
        idx_root,
        [
            *TINY_RESNET,
            "debug=fast",
            "trainer.limit_train_batches=2",
            "test=false",
            "~callbacks.progress_bar",
            "~callbacks.latent_space",
            "~callbacks.traversals",
        ],
    )
    assert torch.isfinite(torch.tensor(run.metrics["val/elbo"]))
    module = VAELitModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert module.hparams.net["_target_"] == "vae_lightning.models.resnet_vae"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in module.state_dict().items():
        assert torch.equal(value, state[name]), name
    module.eval()
    with torch.no_grad():
        mu, _ = module.net.encode(torch.rand(2, 1, 28, 28))
    assert mu.shape == (2, run.cfg.model.latent_dim)


def test_resnet_config_on_colour_images_builds_for_them(compose_train):
    """The model follows data.image_shape through the interpolation in conf/model/resnet.yaml."""
    cfg = compose_train([*TINY_RESNET, "data.image_shape=[3,48,40]"])
    assert list(cfg.model.net.image_shape) == [3, 48, 40]
    module = instantiate(cfg.model, optimizer=cfg.optimizer)
    assert module.net(torch.rand(1, 3, 48, 40)).logits.shape == (1, 3, 48, 40)


@pytest.mark.parametrize("model", ["conv", "resnet"])
def test_image_too_small_for_the_model_is_a_config_error_naming_both(compose_train, model):
    with pytest.raises(ConfigError) as info:
        train(compose_train([f"model={model}", "data.image_shape=[3,6,6]"]))
    message = str(info.value)
    assert f"model={model} cannot be built for data.image_shape=[3, 6, 6]" in message
    assert "needs images of at least 8x8 pixels" in message
    assert "nothing was run and no file was written" in message


def test_model_built_for_other_images_than_the_data_is_a_config_error(compose_train):
    with pytest.raises(ConfigError) as info:
        train(
            compose_train(
                [*TINY_RESNET, "model.net.image_shape=[1,28,28]", "data.image_shape=[3,32,32]"]
            )
        )
    assert (
        "model=resnet is built for images of model.net.image_shape=[1, 28, 28], but the data's "
        "are data.image_shape=[3, 32, 32]"
    ) in str(info.value)
