"""The dataset registry: one entry per dataset, and every user of dataset facts reads it."""

import pytest
from torchvision import datasets

from helpers.paths import CONF_DIR
from helpers.runs import output_overrides
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import MNISTDataModule
from vae_lightning.data.checksums import known_md5
from vae_lightning.data.registry import (
    DATASETS,
    UnknownDatasetError,
    class_names,
    dataset_info,
    dataset_names,
)
from vae_lightning.errors import ConfigError


def test_every_dataset_has_a_data_config_and_consistent_facts():
    assert dataset_names() == [
        "mnist",
        "fashion_mnist",
        "cifar10",
        "dsprites",
        "image_folder",
        "celeba",
    ]
    for name, info in DATASETS.items():
        assert info.name == name
        assert (CONF_DIR / "data" / f"{name}.yaml").is_file()
        if info.images is None:  # an image folder's classes are known once it is scanned
            assert len(set(info.class_names)) == len(info.class_names) >= 3
        assert len(info.image_shape) == 3
        groups = (info.idx, info.archive, info.images)
        assert sum(group is not None for group in groups) <= 1  # one storage group at most


def test_each_data_config_picks_its_dataset_with_its_image_shape(compose_train, tmp_path):
    for name, info in DATASETS.items():  # (compose_train: an initialised Hydra)
        data = compose_as_launched("train", [f"data={name}", *output_overrides(tmp_path)]).data
        assert data.dataset == name
        assert tuple(data.image_shape) == info.image_shape


def test_idx_facts_match_torchvision():
    """File names and torchvision class of each IDX dataset are the ones torchvision
    downloads; its published MD5s plus the registry's extras are what checksums accept."""
    for info in DATASETS.values():
        if info.idx is None:
            continue
        torchvision_class = getattr(datasets, info.idx.torchvision_class)
        published = {name for name, _ in torchvision_class.resources}
        assert published == {f"{name}.gz" for name in info.idx.file_names}
        assert len(torchvision_class.classes) == len(info.class_names)
        accepted = known_md5()[info.name]
        for name, md5 in info.idx.extra_md5.items():
            assert md5 in accepted[name] and len(accepted[name]) == 2


def test_image_file_facts_match_torchvision():
    """CelebA's folder and partition file are where torchvision's CelebA keeps them."""
    for info in DATASETS.values():
        if info.images is None or info.images.torchvision_class is None:
            continue
        torchvision_class = getattr(datasets, info.images.torchvision_class)
        downloaded = {name for _, _, name in torchvision_class.file_list}
        folder = torchvision_class.base_folder
        assert info.images.image_folder == f"{folder}/img_align_celeba"
        assert f"{info.images.image_folder.split('/')[-1]}.zip" in downloaded
        assert info.images.partition_file == f"{folder}/list_eval_partition.txt"
        assert info.images.partition_file.split("/")[-1] in downloaded


def test_class_names_follow_torchvisions_labels():
    assert class_names("fashion_mnist")[0] == "T-shirt/top"
    assert class_names("fashion_mnist") == datasets.FashionMNIST.classes
    assert class_names("mnist") == [str(digit) for digit in range(10)]
    assert class_names(None, num_classes=3) == ["0", "1", "2"]  # a user's own data module


def test_an_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UnknownDatasetError) as info:
        dataset_info("cifar100")
    message = str(info.value)
    assert "data.dataset='cifar100'" in message and "mnist, fashion_mnist, cifar10" in message
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="choose one of mnist, fashion_mnist"):
        MNISTDataModule(dataset="cifar100")


def test_the_idx_module_refuses_a_dataset_in_another_format():
    with pytest.raises(ValueError, match="pick its own data config .data=cifar10."):
        MNISTDataModule(dataset="cifar10")


def test_archive_facts_match_torchvision():
    """CIFAR-10's file and URL are those of torchvision's CIFAR10, which downloads it and
    publishes the MD5s checked (data/cifar.py)."""
    cifar = dataset_info("cifar10")
    assert cifar.archive.file_name == datasets.CIFAR10.filename
    assert cifar.archive.url == datasets.CIFAR10.url
    assert getattr(datasets, cifar.archive.torchvision_class) is datasets.CIFAR10
