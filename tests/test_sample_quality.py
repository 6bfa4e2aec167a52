"""Sample-quality metrics: FID, KID and precision/recall against independent float64
computations, the domain classifier's cache, and vae-eval writing the keys."""

import json
from pathlib import Path

import pytest
import torch

from helpers.runs import run_module, train_run
from vae_lightning.data import MNISTDataModule
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import check_eval_settings
from vae_lightning.metrics.features import (
    ClassifierSettings,
    DomainClassifier,
    FeatureExtractorError,
    domain_classifier,
    inception_extractor,
)
from vae_lightning.metrics.sample_quality import (
    frechet_distance,
    kernel_distance,
    precision_recall,
)


def gaussian_features(n: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing + shift


def symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def closed_form_frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2)), by eigh."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = symmetric_sqrt(cov_a)
    cross = symmetric_sqrt(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())


def test_frechet_distance_of_a_set_to_itself_is_zero():
    features = gaussian_features(500, 8, 0.0, seed=0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_the_closed_form_between_two_gaussian_sets():
    a = gaussian_features(400, 6, 0.0, seed=1)
    b = gaussian_features(300, 6, 0.7, seed=2) * 1.5
    expected = closed_form_frechet(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    """One subset of all points: the U-statistic, computed pair by pair in float64."""
    real = torch.tensor([[0.0, 1.0], [1.0, 0.5], [2.0, -1.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5, 0.5], [3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)

    def kernel(x, y):
        return (float(x @ y) / 2 + 1) ** 3

    m = 3
    xx = sum(kernel(real[i], real[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(kernel(fake[i], fake[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(kernel(real[i], fake[j]) for i in range(m) for j in range(m))
    expected = (xx + yy) / (m * (m - 1)) - 2 * xy / m**2

    kid = kernel_distance(real, fake, subsets=1, subset_size=3)
    assert kid.mean == pytest.approx(expected, rel=1e-9)
    assert kid.subset_size == 3


def test_kernel_distance_is_reproducible_and_leaves_the_global_rng_alone():
    a, b = gaussian_features(300, 4, 0.0, seed=3), gaussian_features(300, 4, 0.5, seed=4)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first = kernel_distance(a, b, subsets=10, subset_size=50)
    assert torch.rand(1) == before
    assert kernel_distance(a, b, subsets=10, subset_size=50) == first
    assert first.mean > 0 and first.std > 0


def test_precision_and_recall_of_identical_and_of_far_apart_sets():
    a = gaussian_features(200, 5, 0.0, seed=5).float()
    assert precision_recall(a, a.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(a, a + 1000.0, k=3) == (0.0, 0.0)


def test_precision_and_recall_by_hand_on_a_line():
    """Real 0,1,2,3 (k=1 radii all 1); fake 0.5, 0.7, 10 (radii 0.2, 0.2, 9.3).
    Precision: 0.5 and 0.7 lie within 1 of a real point, 10 does not -> 2/3.
    Recall: 0 is 0.5 from the nearest fake (radius 0.2) and 10 from 10 (9.3): out;
    1, 2, 3 lie within 9.3 of 10 -> 3/4."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5], [0.7], [10.0]], dtype=torch.float64)
    precision, recall = precision_recall(real, fake, k=1, chunk_rows=2)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(3 / 4)


def tiny_labelled_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: bright top half or bright bottom half, with noise (uint8, 1x28x28)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    images[labels == 0, :, :14] += 0.7
    images[labels == 1, :, 14:] += 0.7
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


def test_domain_classifier_is_cached_reused_and_retrained_when_its_settings_change(tmp_path):
    train, test = tiny_labelled_images(192, seed=0), tiny_labelled_images(64, seed=1)
    settings = ClassifierSettings(width=8, feature_dim=16, epochs=4, batch_size=32, lr=3e-3)
    model, record = domain_classifier(tmp_path, "toy", train, test, 2, False, settings)
    assert record["trained_now"] and record["test_accuracy"] > 0.9
    path = Path(record["path"])
    written = path.stat().st_mtime_ns

    again, second = domain_classifier(tmp_path, "toy", train, test, 2, False, settings)
    assert not second["trained_now"] and path.stat().st_mtime_ns == written
    assert second["test_accuracy"] == record["test_accuracy"]
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name

    changed = ClassifierSettings(width=8, feature_dim=16, epochs=1, batch_size=32, lr=3e-3)
    few = (train[0][:32], train[1][:32])  # the cache key ignores the images: train fast
    _, third = domain_classifier(tmp_path, "toy", few, test, 2, False, changed)
    assert third["trained_now"] and Path(third["path"]) != path
    _, binary = domain_classifier(tmp_path, "toy", few, test, 2, True, settings)
    assert binary["trained_now"] and Path(binary["path"]) != path


def test_domain_classifier_training_is_deterministic(tmp_path):
    train, test = tiny_labelled_images(128, seed=2), tiny_labelled_images(32, seed=3)
    settings = ClassifierSettings(width=4, feature_dim=8, epochs=1, batch_size=32)
    first, _ = domain_classifier(tmp_path / "a", "toy", train, test, 2, True, settings)
    second, _ = domain_classifier(tmp_path / "b", "toy", train, test, 2, True, settings)
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name
    assert isinstance(first, DomainClassifier)
    assert first.features(torch.rand(3, 1, 28, 28)).shape == (3, 8)


def test_inception_features_without_torch_fidelity_say_what_to_install():
    pytest.importorskip("torchmetrics")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(FeatureExtractorError, match="eval.features=domain"):
            inception_extractor()
    else:
        pytest.skip("torch-fidelity is installed here")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, idx_root) -> Path:
    overrides = ["debug=fast", "~callbacks.progress_bar", "~callbacks.images"]
    return train_run(tmp_path_factory.mktemp("run"), idx_root, overrides).dir


@pytest.mark.slow
def test_vae_eval_writes_the_sample_quality_keys(tmp_path, trained_run):
    run_dir = trained_run
    eval_dir, cache = tmp_path / "eval", tmp_path / "cache"
    result = run_module(
        "vae_lightning.evaluate",
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'epoch_000.ckpt'}",
            "eval.metrics=[nll,fid,kid,precision_recall]",
            "eval.iwae_k=2",
            "eval.num_samples=150",
            "eval.kid_subsets=5",
            "eval.classifier.epochs=1",
            "eval.classifier.width=8",
            f"eval.feature_cache_dir={cache}",
            "eval.progress_bar=false",
            f"hydra.run.dir={eval_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((eval_dir / "eval.json").read_text())
    for key in ("fid", "kid", "kid_std", "precision", "recall", "nll_iwae"):
        assert isinstance(report[f"test/{key}"], float), key
    assert report["test/fid"] > 0 and 0 <= report["test/precision"] <= 1
    quality = report["sample_quality"]
    assert quality["num_samples"] == 150 and quality["num_real"] == 200
    assert quality["generated_images"] == "bernoulli_samples"  # data.binarize=dynamic
    assert quality["kid_subset_size"] == 150 and quality["nearest_k"] == 3
    extractor = quality["feature_extractor"]
    assert 0 <= extractor["test_accuracy"] <= 1 and extractor["trained_now"]
    assert Path(extractor["path"]).parent == cache
    assert "test accuracy" in result.stdout and "test/fid" in result.stdout


def test_vae_eval_settings_reject_an_unknown_metric_and_feature_kind():
    with pytest.raises(ConfigError) as caught:
        check_eval_settings(
            {
                "metrics": ["nll", "fidd"],
                "features": "clip",
                "num_samples": 0,
                "classifier": {"epochs": 0, "depth": 5},
            },
            MNISTDataModule,
        )
    message = str(caught.value)
    assert "eval.metrics" in message and "precision_recall" in message
    assert "eval.features='clip'" in message and "eval.num_samples=0" in message
    assert "eval.classifier.epochs=0" in message and "eval.classifier.depth" in message
