"""The discretized logistic mixture: a normalised mass over the 256 levels, checked against
torch.distributions in float64, mpmath in the far tails, and full sums over the levels."""

import math

import mpmath
import pytest
import torch
from hydra import initialize_config_dir
from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

from helpers.archives import cifar10_data, write_cifar10
from helpers.paths import CONF_DIR
from helpers.runs import output_overrides, train_run
from vae_lightning.config_checks import ConfigError, check_config
from vae_lightning.configs import compose_as_launched
from vae_lightning.lit_module import VAELitModule
from vae_lightning.models.likelihoods import MIN_LOG_SCALE, DiscretizedLogistic
from vae_lightning.train import train

LEVELS = torch.arange(256, dtype=torch.float64)


def one_channel_logits(weights, means, log_scales) -> torch.Tensor:
    """Decoder output (K = 3M, 1, 1) for a one-pixel grey image from per-component values."""
    return torch.tensor([*weights, *means, *log_scales], dtype=torch.float32).view(-1, 1, 1)


def logistic(mean: float, scale: float) -> TransformedDistribution:
    """Logistic(mean, scale) in float64: the logit of a uniform, shifted and scaled."""
    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    return TransformedDistribution(
        Uniform(zero, one), [SigmoidTransform().inv, AffineTransform(mean, scale)]
    )


def as_float32(value: float) -> float:
    """The value as the decoder's float32 output holds it."""
    return torch.tensor(value, dtype=torch.float32).item()


def reference_masses(mean: float, log_scale: float) -> torch.Tensor:
    """The 256 masses in float64: CDF differences over bins of width 2/255 on [-1, 1], the
    edge bins open to -inf and +inf."""
    dist = logistic(as_float32(mean), math.exp(as_float32(log_scale)))
    centres = LEVELS * 2 / 255 - 1
    upper = torch.where(LEVELS == 255, 1.0, dist.cdf(centres + 1 / 255))
    lower = torch.where(LEVELS == 0, 0.0, dist.cdf(centres - 1 / 255))
    return upper - lower


def rounding_tolerance(log_scale: float) -> float:
    """How far float32 may put log P: a level and a mean on [-1, 1] each carry about 6e-8 of
    rounding, which the bin's edges in scales, (x -+ 1/255 - mean) / s, magnify by 1/s."""
    return 1e-5 + 2e-7 * math.exp(-log_scale)


def all_levels(channels: int = 1) -> torch.Tensor:
    return (LEVELS.float() / 255).view(256, 1, 1, 1).expand(256, channels, 1, 1)


def test_decoder_channels_are_those_of_pixelcnn_pp():
    assert DiscretizedLogistic(10).decoder_channels(3) == 100  # 10 M for RGB
    assert DiscretizedLogistic(5).decoder_channels(1) == 15  # 3 M for grey
    with pytest.raises(ValueError, match="needs 15"):
        DiscretizedLogistic(5).log_prob(torch.zeros(2, 14, 4, 4), torch.zeros(2, 1, 4, 4))


# Means inside, at and beyond [-1, 1]; scales from PixelCNN++'s floor (an eighth of a bin) to
# wider than the whole range.
CASES = [(0.0, 0.0), (0.3, -3.0), (-0.999, -5.0), (1.0, -7.0), (1.7, -2.0), (-3.0, 1.5)]


@pytest.mark.parametrize(("mean", "log_scale"), CASES)
def test_one_component_matches_logistic_cdf_differences_in_float64(mean, log_scale):
    got = DiscretizedLogistic(1).log_prob(
        one_channel_logits([0.0], [mean], [log_scale]), all_levels()
    )
    expected = reference_masses(mean, log_scale)
    tolerance = rounding_tolerance(log_scale)
    torch.testing.assert_close(got.double().exp(), expected, atol=tolerance, rtol=0)
    visible = expected > 1e-12  # where float64 differences of CDFs still have digits
    torch.testing.assert_close(
        got.double()[visible], expected.log()[visible], atol=tolerance, rtol=2e-6
    )


def test_mixture_of_one_channel_sums_to_one_over_the_256_levels():
    torch.manual_seed(0)
    cases = torch.randn(50, 1, 12, 1, 1) * 4  # 50 mixtures of 4, logits up to about +-15
    cases[:10, :, 8:] = MIN_LOG_SCALE - 3  # below the floor: evaluated at it
    cases[10:20, :, 8:] = 6.0  # scale e^6: nearly all mass in the two edge bins
    log_mass = DiscretizedLogistic(4).log_prob(cases, all_levels())  # (50, 256)
    torch.testing.assert_close(
        log_mass.double().exp().sum(-1), torch.ones(50, dtype=torch.float64), atol=1e-5, rtol=0
    )


def joint_mass_and_mean(params: torch.Tensor, levels: list[torch.Tensor], chunks: int):
    """Sum of the masses and of x times them over the product of ``levels`` (one list of
    levels per channel) of a one-pixel image, for each leading row of ``params``."""
    likelihood = DiscretizedLogistic(3)
    grid = torch.stack(torch.meshgrid(*levels, indexing="ij"), dim=-1).view(-1, len(levels))
    total = torch.zeros(params.shape[0], dtype=torch.float64)
    mean = torch.zeros(params.shape[0], len(levels), dtype=torch.float64)
    for chunk in grid.split(math.ceil(len(grid) / chunks)):
        x = (chunk.float() / 255).view(-1, len(levels), 1, 1)
        mass = likelihood.log_prob(params, x).double().exp()  # (rows, chunk)
        total += mass.sum(-1)
        mean += mass @ x.view(-1, len(levels)).double()
    return total, mean, likelihood.mean(params).view(params.shape[0], len(levels)).double()


def strong_and_interior_parameters(channels: int) -> torch.Tensor:
    """Two pixels' parameters of a mixture of 3 on ``channels`` channels (a leading dim):
    the first wild (means past the edges, couplings up to +-1), the second as trained ones
    are, narrow logistics in the interior."""
    torch.manual_seed(channels)
    size = DiscretizedLogistic(3).decoder_channels(channels)
    params = torch.randn(2, 1, size, 1, 1) * 2
    params[1, :, 3:] *= 0.05
    params[1, :, 3 + 3 * channels : 3 + 6 * channels] = -5.0  # scale e^-5, under a level
    return params


def test_two_channel_joint_sums_to_one_over_all_colours():
    """The channels are autoregressive (the second's mean moves with the first), so the
    joint over all 256^2 colours of a pixel sums to one: summed here in full."""
    params = strong_and_interior_parameters(2)
    total, mean, approx = joint_mass_and_mean(params, [LEVELS, LEVELS], chunks=1)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)
    # E[x|z]'s closed form against the exact sum: within half a level (the rounding to
    # levels), even where the clamp at 0 and 1 bends the coupled means (0.05 levels here).
    assert (approx - mean).abs().max() < 0.5 / 255


def test_rgb_joint_of_an_interior_pixel_sums_to_one_over_the_levels_holding_its_mass():
    """Means within 0.1 of 0 (mid-grey), scales e^-5 (under a level), couplings under 0.2:
    even coupled to a channel at the box's edge, each channel's mean stays 15 scales inside
    the 81^3 box of levels 88..168 summed here, so the box misses under 3 * 2e^-15 = 2e-6."""
    params = strong_and_interior_parameters(3)[1:]
    box = LEVELS[128 - 40 : 128 + 41]
    total, mean, approx = joint_mass_and_mean(params, [box, box, box], chunks=4)
    assert total.item() == pytest.approx(1.0, abs=1e-5)
    assert (approx - mean).abs().max() < 0.5 / 255


@pytest.mark.slow
def test_rgb_joint_sums_to_one_over_all_256_cubed_colours():
    """The full 256^3 sum (16.7M colours), wild parameters and interior ones."""
    params = strong_and_interior_parameters(3)
    total, mean, approx = joint_mass_and_mean(params, [LEVELS] * 3, chunks=64)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (approx[1] - mean[1]).abs().max() < 0.5 / 255
    # With means past the edges and strong couplings, feeding the earlier channels' clamped
    # means into the couplings (not the whole distribution) is off by 1.2 levels here.
    assert (approx[0] - mean[0]).abs().max() < 2 / 255


@pytest.mark.parametrize(("mean", "log_scale"), CASES)
def test_one_channel_mean_is_the_sum_over_levels_within_half_a_level(mean, log_scale):
    likelihood = DiscretizedLogistic(2)
    logits = one_channel_logits([0.5, -0.5], [mean, -mean / 2], [log_scale, log_scale + 1])
    mass = likelihood.log_prob(logits, all_levels()).double().exp()
    exact = (mass * LEVELS / 255).sum()
    assert likelihood.mean(logits).item() == pytest.approx(exact.item(), abs=0.5 / 255 + 1e-6)


def mp_log_mass(level: int, mean: float, scale: float) -> float:
    """log P(level) with 2000 digits: plain sigmoid differences, no rearrangement."""
    with mpmath.workdps(2000):
        x = mpmath.mpf(level) * 2 / 255 - 1
        sigmoid = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
        upper = 1 if level == 255 else sigmoid((x + mpmath.mpf(1) / 255 - mean) / scale)
        lower = 0 if level == 0 else sigmoid((x - mpmath.mpf(1) / 255 - mean) / scale)
        return float(mpmath.log(upper - lower))


# Far tails, where float32 sigmoid differences are 0 (log -inf) or all rounding: above and
# below the mean, narrow and wide, edge bins included. log P goes down to about -1e4.
TAILS = [
    (200, -0.9, -7.0),
    (10, 0.9, -7.0),
    (255, -0.99, -6.0),
    (0, 0.95, -5.0),
    (254, -1.0, -7.0),
    (128, 0.0, -6.5),
    (129, 0.0, -7.0),
    (60, 0.8, -3.0),
]


@pytest.mark.parametrize(("level", "mean", "log_scale"), TAILS)
def test_far_tails_match_mpmath(level, mean, log_scale):
    got = DiscretizedLogistic(1).log_prob(
        one_channel_logits([0.0], [mean], [log_scale]),
        torch.full((1, 1, 1, 1), level / 255),
    )
    expected = mp_log_mass(level, as_float32(mean), math.exp(as_float32(log_scale)))
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(expected, rel=2e-6, abs=rounding_tolerance(log_scale))


def test_edge_bins_and_levels_off_the_grid():
    likelihood = DiscretizedLogistic(1)
    below, above = (
        one_channel_logits([0.0], [-5.0], [-2.0]),
        one_channel_logits([0.0], [5.0], [-2.0]),
    )
    black, white = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    # A mean far outside [-1, 1] puts all its mass in the edge bin on that side.
    assert likelihood.log_prob(below, black).item() == pytest.approx(0.0, abs=1e-6)
    assert likelihood.log_prob(above, white).item() == pytest.approx(0.0, abs=1e-6)
    # The lowest bin is (-inf, -1 + 1/255]: P = sigmoid((-1 + 1/255 - mean) / s).
    centre = one_channel_logits([0.0], [-1.0], [math.log(0.01)])
    expected = -math.log1p(math.exp(-(1 / 255) / 0.01))
    assert likelihood.log_prob(centre, black).item() == pytest.approx(expected, rel=1e-5)
    # x is snapped to its level, k = round(255 x).
    logits = one_channel_logits([0.0], [0.1], [-3.0])
    on_grid = likelihood.log_prob(logits, torch.full((1, 1, 1, 1), 140 / 255))
    off_grid = likelihood.log_prob(logits, torch.full((1, 1, 1, 1), 140.4 / 255))
    assert on_grid.item() == off_grid.item()


def test_gradients_are_finite_for_extreme_decoder_outputs():
    likelihood = DiscretizedLogistic(2)
    torch.manual_seed(2)
    logits = torch.randn(3, 2, 20, 4, 4) * 1e3  # 3 samples of 2 RGB images
    logits[0, :, 8:14] = -1e4  # log-scales far below the floor
    logits[1, :, 8:14] = 200.0  # scales so wide that the bin width underflows to 0
    logits.requires_grad_(True)
    x = torch.randint(0, 256, (2, 3, 4, 4)) / 255
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    log_prob = likelihood.log_prob(logits, x)
    assert log_prob.shape == (3, 2) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(logits.grad).all()
    mean = likelihood.mean(logits.detach())
    assert mean.shape == (3, 2, 3, 4, 4) and ((mean >= 0) & (mean <= 1)).all()


def test_bad_num_mixtures_is_rejected_before_training(compose_train):
    with pytest.raises(ConfigError, match="likelihood.num_mixtures=0"):
        check_config(
            compose_train(["likelihood=discretized_logistic", "likelihood.num_mixtures=0"])
        )


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_trains_and_reports_bits_per_dim(tmp_path, idx_root, model):
    """A real 2-step run: the decoder gets 3M values per pixel, the ELBO is a log-mass (so
    below 0), and test/bits_per_dim is test/nll_iwae / (784 ln 2)."""
    run = train_run(
        tmp_path,
        idx_root,
        [
            f"model={model}",
            "likelihood=discretized_logistic",
            "likelihood.num_mixtures=2",
            "debug=fast",
            "trainer.limit_train_batches=2",
            "~callbacks",
            "test_iwae_k=2",
        ],
    )
    assert run.cfg.data.binarize == "none"
    metrics = run.metrics
    assert metrics["val/elbo"] < 0  # log of a mass, minus a KL
    assert metrics["test/nll_iwae"] > 0
    assert metrics["test/bits_per_dim"] == pytest.approx(
        metrics["test/nll_iwae"] / (784 * math.log(2)), rel=1e-5
    )


# The run keeps its checkpoint and the colour reconstructions and samples (callbacks.images).
UNNEEDED_CALLBACKS = [
    "traversals",
    "interpolations",
    "manifold",
    "latent_space",
    "posterior_collapse",
    "progress_bar",
]


def test_trains_on_colour_images_with_the_channel_couplings(tmp_path):
    """A real 2-step conv run on a generated CIFAR-10 (3x32x32): 10M values per pixel,
    visual callback drawing colour means, bits/dim over the 3072 sub-pixels."""
    write_cifar10(tmp_path / "cifar")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched(
            "train",
            [
                *cifar10_data(tmp_path / "cifar"),
                *output_overrides(tmp_path / "run"),
                "model=conv",
                "likelihood=discretized_logistic",
                "likelihood.num_mixtures=2",
                "debug=fast",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                "data.batch_size=50",
                "model.latent_dim=4",
                "test_iwae_k=2",
                *(f"~callbacks.{name}" for name in UNNEEDED_CALLBACKS),
            ],
        )
        metrics = train(cfg)
    assert metrics["val/elbo"] < 0
    assert metrics["test/bits_per_dim"] == pytest.approx(
        metrics["test/nll_iwae"] / (3 * 32 * 32 * math.log(2)), rel=1e-5
    )
    model = VAELitModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_000.ckpt")
    assert model.likelihood.decoder_channels(3) == 20
    mean = model.decode_mean(torch.zeros(2, 4))
    assert mean.shape == (2, 3, 32, 32) and ((mean >= 0) & (mean <= 1)).all()


def test_iwae_chunks_hold_as_many_decoder_values_as_for_one_value_per_pixel():
    """The estimator's memory bound counts values, not rows: a 10-component RGB mixture emits
    100 values per pixel where Bernoulli emits 3, so it decodes 100/3 times fewer rows."""
    from vae_lightning.lit_module import VAELitModule

    def module(likelihood: dict) -> VAELitModule:
        return VAELitModule(
            net={"_target_": "vae_lightning.models.mlp_vae", "image_shape": [3, 8, 8]},
            optimizer={"_target_": "torch.optim.Adam"},
            likelihood=likelihood,
            iwae_chunk_rows=10000,
        )

    bernoulli = module({"_target_": "vae_lightning.models.likelihoods.Bernoulli"})
    mixture = module(
        {"_target_": "vae_lightning.models.likelihoods.DiscretizedLogistic", "num_mixtures": 10}
    )
    assert bernoulli.iwae_chunk_rows == 10000
    assert mixture.iwae_chunk_rows == 300  # 10000 / (100 / 3)
