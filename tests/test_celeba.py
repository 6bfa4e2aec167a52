"""data=celeba on a tiny generated CelebA (178x218 JPEGs and a partition file)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from helpers.images import folder_config, folder_train_run, write_celeba
from vae_lightning.config_checks import check_config
from vae_lightning.data import CelebADataModule
from vae_lightning.data.image_files import ImageFolderError


def celeba_module(root, **options):
    options.setdefault("binarize", "none")
    dm = CelebADataModule(root=str(root), download=False, decode_workers=2, **options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    """12 images: 1-6 train, 7-9 valid, 10-12 test (torchvision's layout)."""
    return write_celeba(tmp_path_factory.mktemp("celeba_root"))


def test_official_partitions_and_the_literatures_crop(celeba_root):
    dm = celeba_module(celeba_root)
    assert {split: len(dm.splits[split][0]) for split in dm.splits} == {
        "train": 6,
        "val": 3,
        "test": 3,
    }
    assert all(set(labels.tolist()) == {0} for _, labels in dm.splits.values())
    assert dm.sources["train"] == celeba_root / "celeba" / "img_align_celeba"
    # The reference pipeline: torchvision's CenterCrop(148) then Resize(64) on the PIL image.
    reference = transforms.Compose([transforms.CenterCrop(148), transforms.Resize(64)])
    for split, number in (("train", 1), ("val", 7), ("test", 12)):
        with Image.open(celeba_root / "celeba" / "img_align_celeba" / f"{number:06d}.jpg") as f:
            expected = np.asarray(reference(f.convert("RGB"))).transpose(2, 0, 1)
        expected = torch.from_numpy(expected.copy())
        assert any(torch.equal(image, expected) for image in dm.splits[split][0])


def test_a_local_img_align_celeba_folder_is_found(celeba_root, tmp_path):
    shutil.copytree(
        celeba_root / "celeba",
        tmp_path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".vae_cache"),
    )
    dm = celeba_module(tmp_path)
    assert dm.sources["val"] == tmp_path / "img_align_celeba"
    assert torch.equal(dm.splits["val"][0], celeba_module(celeba_root).splits["val"][0])


def test_missing_files_error_names_what_to_put_where(tmp_path):
    with pytest.raises(ImageFolderError) as info:
        celeba_module(tmp_path)
    message = str(info.value)
    assert "Downloading is off (data.download=false)" in message
    assert f"into {tmp_path / 'celeba' / 'img_align_celeba'}/" in message
    assert f"as {tmp_path / 'celeba' / 'list_eval_partition.txt'}" in message
    assert "img_align_celeba.zip" in message


def test_incomplete_folder_and_bad_partition_file_are_named(celeba_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(celeba_root, root, ignore=shutil.ignore_patterns(".vae_cache"))
    (root / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(ImageFolderError, match=r"lists 12 images, but 1 are not in .*000003.jpg"):
        celeba_module(root)
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(ImageFolderError, match=r"line 2 reads '000002.jpg train'"):
        celeba_module(root)


def test_a_training_run_on_celeba(celeba_root, tmp_path):
    overrides = [
        "data=celeba",
        f"data.root={celeba_root}",
        "data.download=false",
        "data.image_size=16",
        "data.batch_size=4",
        "data.eval_batch_size=3",
        "likelihood=gaussian",
    ]
    cfg = folder_config(tmp_path / "cfg", overrides)
    check_config(cfg)
    assert list(cfg.data.image_shape) == [3, 16, 16] and cfg.data.binarize == "none"
    run = folder_train_run(
        tmp_path / "run",
        [
            *overrides,
            "debug=fast",
            "~callbacks.progress_bar",
            "trainer.limit_train_batches=2",
            "report=false",
            "test_iwae_k=2",
        ],
    )
    assert np.isfinite(run.metrics["val/elbo"]) and np.isfinite(run.metrics["test/elbo"])


def test_the_official_partitions_are_views_of_one_loaded_array(celeba_root):
    """Consecutive partitions are not copied: the images are held once, not twice."""
    dm = celeba_module(celeba_root)
    buffers = {images.untyped_storage().data_ptr() for images, _ in dm.splits.values()}
    assert len(buffers) == 1
    assert dm.splits["train"][0].untyped_storage().nbytes() == 12 * 3 * 64 * 64
    assert len(dm.decoded.images) == 0
