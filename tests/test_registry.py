"""The dataset registry: one entry per dataset, and every user of dataset facts reads it."""

import pytest
from torchvision import datasets

from helpers.images import folder_config
from helpers.paths import CONF_DIR
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
    assert dataset_names() == ["mnist", "fashion_mnist", "image_folder", "celeba"]
    for name, info in DATASETS.items():
        assert info.name == name
        assert (CONF_DIR / "data" / f"{name}.yaml").is_file()
        if info.idx is not None:
            assert len(info.class_names) == 10 and len(set(info.class_names)) == 10
        assert len(info.image_shape) == 3
        assert (info.idx is None) != (info.images is None)  # one storage group each


def test_each_data_config_picks_its_dataset_with_its_image_shape(tmp_path):
    for name, info in DATASETS.items():
        data = folder_config(tmp_path, [f"data={name}"]).data  # no IDX-only overrides
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
        dataset_info("cifar10")
    message = str(info.value)
    assert "data.dataset='cifar10'" in message and "mnist, fashion_mnist" in message
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="choose one of mnist, fashion_mnist"):
        MNISTDataModule(dataset="cifar10")
