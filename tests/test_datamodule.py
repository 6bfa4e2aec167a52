"""MNISTDataModule on generated IDX files (both layouts) and on the real MNIST test split."""

import hashlib
import logging
import shutil

import pytest
import torch

from helpers.data import write_dataset
from helpers.paths import FASHION_MNIST, SHARED_MNIST
from vae_lightning.data import DataFileError, MNISTDataModule
from vae_lightning.data.datamodule import (
    binarization_seed,
    binarize_with_seed,
    prepare_images,
    storage_device,
)
from vae_lightning.errors import ConfigError


def setup_module_on(root, **kwargs):
    dm = MNISTDataModule(root=str(root), download=False, val_size=100, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_layouts_give_same_data(tmp_path, idx_root, layout):
    if layout == "flat-gz":
        root = idx_root
    else:
        root = tmp_path
        write_dataset(tmp_path / "MNIST" / "raw", gz=False)
    dm = setup_module_on(root)
    train_images, train_labels = dm.splits["train"]
    assert train_images.shape == (500, 1, 28, 28) and train_images.dtype == torch.uint8
    assert len(dm.splits["val"][0]) == 100 and len(dm.splits["test"][0]) == 200
    reference = setup_module_on(idx_root)
    assert torch.equal(train_labels, reference.splits["train"][1])


def test_validation_split_is_fixed_and_disjoint_from_train(idx_root):
    dm, again = setup_module_on(idx_root, seed=1), setup_module_on(idx_root, seed=2)
    assert torch.equal(dm.splits["val"][0], again.splits["val"][0])  # split_seed, not seed
    # The generated training set has 600 distinct images (random noise backgrounds).
    train_rows = {row.numpy().tobytes() for row in dm.splits["train"][0]}
    val_rows = {row.numpy().tobytes() for row in dm.splits["val"][0]}
    assert len(train_rows) == 500 and not train_rows & val_rows


def test_val_and_test_are_binarized_once_with_a_seed(idx_root):
    dm = setup_module_on(idx_root)
    for split in ("val", "test"):
        values = set(dm.splits[split][0].unique().tolist())
        assert values <= {0, 255}
    assert dm.splits["train"][0].unique().numel() > 2  # dynamic: training keeps grey levels
    assert torch.equal(dm.splits["val"][0], setup_module_on(idx_root).splits["val"][0])
    static = setup_module_on(idx_root, binarize="static")
    assert set(static.splits["train"][0].unique().tolist()) <= {0, 255}
    grey = setup_module_on(idx_root, binarize="none")
    assert grey.splits["val"][0].unique().numel() > 2


def test_each_split_binarization_depends_on_that_split_only(idx_root):
    """Validation images are the same 0/1 draw under dynamic and static binarization, and the
    test draw does not follow split_seed (which picks the validation images, not the test's)."""
    dynamic = setup_module_on(idx_root, binarize="dynamic")
    static = setup_module_on(idx_root, binarize="static")
    assert torch.equal(dynamic.splits["val"][0], static.splits["val"][0])
    assert torch.equal(dynamic.splits["test"][0], static.splits["test"][0])
    other_split = setup_module_on(idx_root, split_seed=7)
    assert torch.equal(other_split.splits["test"][0], dynamic.splits["test"][0])
    assert not torch.equal(other_split.splits["val"][0], dynamic.splits["val"][0])
    # The draws themselves differ between splits: no two splits share a stream.
    grey = setup_module_on(idx_root, binarize="none")
    test_again = binarize_with_seed(grey.splits["test"][0], binarization_seed("val", 42))
    assert not torch.equal(test_again, dynamic.splits["test"][0])


def test_binarization_statistics():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2000, 1, 28, 28), dtype=torch.uint8)
    mean_intensity = images.float().mean() / 255
    fresh = prepare_images(images, fresh_draw=True)
    assert set(fresh.unique().tolist()) == {0.0, 1.0}
    assert fresh.mean().item() == pytest.approx(mean_intensity.item(), abs=2e-3)
    assert not torch.equal(fresh, prepare_images(images, fresh_draw=True))  # a new draw
    fixed = binarize_with_seed(images, seed=7)
    assert torch.equal(fixed, binarize_with_seed(images, seed=7))
    assert (fixed.float() / 255).mean().item() == pytest.approx(mean_intensity.item(), abs=2e-3)
    grey = prepare_images(images, fresh_draw=False)
    assert grey.min() >= 0 and grey.max() <= 1


def test_fresh_draw_is_bernoulli_of_each_intensity():
    """Every uint8 level v is drawn 1 with probability v / 255: 0 never, 255 always."""
    torch.manual_seed(0)
    draws = 4000
    levels = torch.arange(256, dtype=torch.uint8).repeat(draws, 1)
    fresh = prepare_images(levels, fresh_draw=True)
    assert fresh.dtype == torch.float32
    frequency = fresh.mean(dim=0)
    p = torch.arange(256) / 255
    sigma = (p * (1 - p) / draws).sqrt()
    assert torch.all((frequency - p).abs() <= 5 * sigma + 1e-7)
    assert frequency[0] == 0 and frequency[255] == 1


@pytest.mark.parametrize("loader", ["tensor", "torch"])
def test_loaders_yield_float_ready_batches(idx_root, loader):
    dm = setup_module_on(idx_root, loader=loader, batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    prepared, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert prepared.dtype == torch.float32 and prepared.min() >= 0 and prepared.max() <= 1
    assert sum(len(batch[0]) for batch in dm.val_dataloader()) == 100


def test_missing_files_error_says_where_and_how_to_fix(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    dm.prepare_data()
    with pytest.raises(DataFileError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in message and "train-labels-idx1-ubyte[.gz]" in message
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "data.download=false" in message and "copy the IDX files" in message
    assert "data.download=true" in message


def test_download_failure_is_reported(tmp_path, monkeypatch):
    """With no network the torchvision download fails; the error says why and what to do."""
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets, "MNIST", offline)
    dm = MNISTDataModule(root=str(tmp_path), download=True)
    dm.prepare_data()
    with pytest.raises(DataFileError, match="download failed \\(network unreachable\\)"):
        dm.setup("fit")


def test_corrupt_file_error_names_the_file(tmp_path, idx_root):
    shutil.copytree(idx_root, tmp_path / "copy")
    broken = tmp_path / "copy" / "train-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz cannot be read"):
        setup_module_on(tmp_path / "copy")


def test_val_size_larger_than_train_is_rejected(idx_root):
    dm = MNISTDataModule(root=str(idx_root), download=False, val_size=600)
    with pytest.raises(ValueError, match="data.val_size=600 must be between 1 and 599"):
        dm.setup("fit")


@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="../shared/data/mnist (real MNIST test split) is absent"
)
def test_real_mnist_test_split():
    md5 = {
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    for name, digest in md5.items():
        assert hashlib.md5((SHARED_MNIST / name).read_bytes()).hexdigest() == digest
    dm = MNISTDataModule(root=str(SHARED_MNIST), download=False)
    images, labels = dm.load_split("test")
    assert images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert 0.12 < images.float().mean().item() / 255 < 0.14  # MNIST's mean intensity is 0.1325


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_found_in_debian_folder(tmp_path):
    dm = MNISTDataModule(
        dataset="fashion_mnist",
        root=str(tmp_path),
        download=False,
        search_dirs=[str(FASHION_MNIST)],
    )
    dm.setup("fit")
    assert len(dm.splits["train"][0]) == 55_000 and len(dm.splits["test"][0]) == 10_000
    assert torch.bincount(dm.splits["test"][1]).tolist() == [1000] * 10


def image_rows(images: torch.Tensor) -> list[bytes]:
    """Each image as bytes, sorted: equal lists mean equal multisets of images."""
    return sorted(image.numpy().tobytes() for image in images)


def epoch_of(loader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([images for images, _ in loader])


def test_tensor_loader_epochs_hold_the_split_in_seeded_orders(idx_root):
    dm = setup_module_on(idx_root, batch_size=64, seed=3)
    loader = dm.train_dataloader()
    first, second = epoch_of(loader, 0), epoch_of(loader, 1)
    assert image_rows(first) == image_rows(second) == image_rows(dm.splits["train"][0])
    assert not torch.equal(first, second)
    same_seed = setup_module_on(idx_root, batch_size=64, seed=3).train_dataloader()
    assert torch.equal(epoch_of(same_seed, 1), second)
    other_seed = setup_module_on(idx_root, batch_size=64, seed=4).train_dataloader()
    assert not torch.equal(epoch_of(other_seed, 1), second)


def test_tensor_and_torch_loaders_yield_identical_batches(idx_root):
    """Unshuffled, the in-memory path and the Dataset + DataLoader path agree exactly."""
    tensor = setup_module_on(idx_root, loader="tensor", eval_batch_size=30)
    torch_path = setup_module_on(idx_root, loader="torch", eval_batch_size=30)
    pairs = list(zip(tensor.val_dataloader(), torch_path.val_dataloader(), strict=True))
    assert len(pairs) == 4  # 100 images in batches of 30
    for (images, labels), (ref_images, ref_labels) in pairs:
        assert images.dtype == ref_images.dtype == torch.uint8
        assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    # Shuffled training epochs differ in order but hold the same images.
    shuffled = torch.cat([images for images, _ in torch_path.train_dataloader()])
    assert image_rows(shuffled) == image_rows(epoch_of(tensor.train_dataloader(), 0))


@pytest.mark.parametrize(
    ("root_device", "loader", "expected"),
    [
        ("cpu", "tensor", "cpu"),
        ("cuda:0", "tensor", "cuda:0"),
        ("cuda:1", "tensor", "cuda:1"),  # DDP rank on the second GPU keeps its own copy
        ("cuda:0", "torch", "cpu"),  # PIL images are built from host memory
        ("mps", "tensor", "cpu"),
    ],
)
def test_storage_device_follows_the_training_gpu_for_the_tensor_loader(
    root_device, loader, expected
):
    assert storage_device(torch.device(root_device), loader) == torch.device(expected)


def test_without_a_trainer_splits_stay_in_host_memory(idx_root):
    dm = setup_module_on(idx_root)
    assert dm.training_device == torch.device("cpu")
    assert all(images.device.type == "cpu" for images, _ in dm.splits.values())


def test_where_each_split_was_read_from_is_said_and_recorded(tmp_path, idx_root, caplog):
    """A data.root that does not exist used to fall back to a search dir silently."""
    missing = tmp_path / "typo"
    dm = MNISTDataModule(
        root=str(missing), search_dirs=[str(idx_root)], download=False, val_size=100
    )
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert dm.sources["train"].parent == idx_root and dm.sources["test"].parent == idx_root
    for split in ("train", "test"):
        assert f"MNIST {split} split: {dm.sources[split]}" in caplog.text
    assert f"(from data.search_dirs: data.root={missing} does not exist)" in caplog.text


def test_val_size_larger_than_the_training_split_is_a_config_error(idx_root):
    with pytest.raises(ConfigError, match="data.val_size=600 must be between 1 and 599"):
        MNISTDataModule(root=str(idx_root), download=False, val_size=600).setup("fit")
