"""data=cifar10: torchvision's python archive or its extracted folder, checksums, errors, and
a real training run whose TensorBoard grids and report figures are in colour."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torchvision.utils import make_grid

from helpers.archives import LABEL_COLOURS, cifar10_data, cifar_batches, write_cifar10
from helpers.events import image_tags, last_rgb_image
from helpers.paths import CONF_DIR
from helpers.runs import output_overrides, vae_train
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import CIFAR10DataModule, DataFileError
from vae_lightning.data.cifar import read_cifar10
from vae_lightning.train import train


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


def expected_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches = cifar_batches(per_batch=60, n_test=100)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": batches["test_batch"],
    }


def test_the_archive_and_the_extracted_folder_give_the_official_splits(tmp_path, cifar_root):
    folder = write_cifar10(tmp_path, extracted=True)
    for source in (cifar_root / "cifar-10-python.tar.gz", folder):
        splits = read_cifar10(source)
        for split, (images, labels) in expected_splits().items():
            assert torch.equal(splits[split][0], torch.from_numpy(images))
            assert torch.equal(splits[split][1], torch.from_numpy(labels))
            assert splits[split][0].dtype == torch.uint8
    # Channel order as in the files: plane 0 is red. Label 0 is (230, 25, 25).
    images, labels = read_cifar10(folder)["train"]
    first_red = images[labels == 0][0]
    assert first_red[:, 0, 0].tolist() == LABEL_COLOURS[0].tolist()


def test_the_data_module_carves_validation_from_train_and_keeps_the_official_test(cifar_root):
    module = CIFAR10DataModule(
        root=str(cifar_root), download=False, verify_checksums=False, val_size=100
    )
    module.setup("fit")
    sizes = {split: len(images) for split, (images, _) in module.splits.items()}
    assert sizes == {"train": 200, "val": 100, "test": 100}
    assert module.splits["val"][0].shape[1:] == (3, 32, 32)
    test_images, _ = expected_splits()["test"]
    assert torch.equal(module.splits["test"][0], torch.from_numpy(test_images))
    assert module.sources["test"] == cifar_root / "cifar-10-python.tar.gz"


def test_the_per_sample_loader_gives_the_same_colour_batches(cifar_root):
    """loader=torch (PIL images through a transform) against the tensor loader."""
    batches = {}
    for loader in ("tensor", "torch"):
        module = CIFAR10DataModule(
            root=str(cifar_root),
            download=False,
            verify_checksums=False,
            val_size=100,
            eval_batch_size=50,
            loader=loader,
        )
        module.setup("fit")
        batches[loader] = next(iter(module.val_dataloader()))
    assert torch.equal(batches["torch"][0], batches["tensor"][0])
    assert batches["torch"][0].shape == (50, 3, 32, 32)
    assert torch.equal(batches["torch"][1], batches["tensor"][1])


def test_an_archive_that_is_not_the_published_one_is_refused_unless_checks_are_off(cifar_root):
    module = CIFAR10DataModule(root=str(cifar_root), download=False, val_size=100)
    with pytest.raises(DataFileError) as info:
        module.setup("fit")
    message = str(info.value)
    assert "is not the published CIFAR-10 archive" in message
    assert "expected c58f30108f718f92721af3b95e74349a" in message  # torchvision's tgz_md5
    assert "data.verify_checksums=false" in message
    CIFAR10DataModule(
        root=str(cifar_root), download=False, val_size=100, verify_checksums=False
    ).setup("fit")


def test_an_extracted_batch_is_checked_against_its_own_published_md5(tmp_path):
    write_cifar10(tmp_path, extracted=True)
    with pytest.raises(DataFileError, match="data_batch_1 has MD5 .* expected c99cafc152"):
        CIFAR10DataModule(root=str(tmp_path), download=False, val_size=100).setup("fit")


def test_missing_data_offline_says_which_file_where_and_the_url(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched(
            "train",
            [*cifar10_data(tmp_path / "empty"), *output_overrides(tmp_path / "run")],
        )
    module = instantiate(cfg.data)
    module.prepare_data()
    with pytest.raises(DataFileError) as info:
        module.setup("fit")
    message = str(info.value)
    for part in (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py/",
        str(tmp_path / "empty"),
        "data.download=false",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ):
        assert part in message
    assert "\n" not in message


def test_a_batch_that_would_run_code_when_unpickled_is_refused(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never run",))

    payload = pickle.dumps({b"data": RunsCode(), b"labels": [0]}, protocol=2)
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(payload)
    with pytest.raises(DataFileError, match=r"print is not part of a CIFAR batch"):
        read_cifar10(tmp_path / "cifar-10-batches-py")


def test_a_truncated_archive_is_a_clear_error(tmp_path, cifar_root):
    data = (cifar_root / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        read_cifar10(tmp_path / "cifar-10-python.tar.gz")


def test_an_archive_without_the_test_batch_is_incomplete(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(DataFileError, match="lacks data_batch_1"):
        read_cifar10(tmp_path / "cifar-10-python.tar.gz")


# ------------------------------------------------------------ a real run, in colour
@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory: pytest.TempPathFactory, cifar_root: Path):
    run_dir = tmp_path_factory.mktemp("cifar_run")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose_as_launched(
            "train",
            [
                *cifar10_data(cifar_root),
                *output_overrides(run_dir),
                "likelihood=gaussian",
                "debug=fast",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "data.batch_size=50",
                "data.hflip=true",
                "model.latent_dim=4",
                "~callbacks.progress_bar",
                "callbacks.latent_space.num_images=50",
                "callbacks.traversals.num_images=50",
                "callbacks.posterior_collapse.num_images=50",
            ],
        )
        train(cfg)
    module = instantiate(cfg.data)
    module.setup("validate")
    return run_dir, module.splits["val"][0]


def test_training_on_cifar_logs_colour_grids_showing_the_inputs(cifar_run):
    run_dir, val_images = cifar_run
    assert {"val/reconstructions", "val/samples", "val/traversals"} <= image_tags(run_dir)
    grid = last_rgb_image(run_dir, "val/reconstructions")
    inputs = val_images[:8].float() / 255  # as the data module hands them to the callback
    expected_top = make_grid(torch.cat([inputs, inputs]), nrow=8).permute(1, 2, 0).numpy()
    expected_top = (expected_top * 255).clip(0, 255).astype(np.uint8)  # as TensorBoard stores
    assert grid.shape == expected_top.shape and grid.shape[2] == 3
    top = slice(0, 2 + 32)  # padding, then the row of inputs
    assert np.array_equal(grid[top], expected_top[top])
    # The inputs are the label colours: red stays red (no swapped or dropped channel).
    centres = {tuple(int(v) for v in c) for c in grid[2 + 16, 2 + 16 :: 34][:8]}
    assert centres <= {tuple(int(v) for v in c) for c in LABEL_COLOURS}


def test_the_report_shows_the_reconstructions_in_colour(cifar_run):
    run_dir, _ = cifar_run
    figure = np.asarray(Image.open(run_dir / "report" / "reconstructions.png").convert("RGB"))
    colours = {tuple(int(v) for v in c) for c in figure.reshape(-1, 3)}
    logged = last_rgb_image(run_dir, "val/reconstructions")
    inputs = {tuple(int(v) for v in c) for c in logged[2 + 16, 2 + 16 :: 34][:8]}
    assert inputs <= colours  # each input's colour, drawn pixel for pixel
    assert any(len(set(c)) > 1 for c in inputs)  # and they are colours, not greys


@pytest.mark.slow  # the ~15 s start-up of a process; the message itself is tested above
def test_vae_train_without_the_archive_offline_prints_one_paragraph(tmp_path):
    args = ["data=cifar10", "likelihood=gaussian", "data.download=false"]
    args.append(f"data.root={tmp_path / 'empty'}")
    result = vae_train([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    paragraph = result.stderr.strip().splitlines()[-1]  # after the log lines ("Seed set ...")
    assert paragraph.startswith("vae-train: error: CIFAR-10 not found")
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in paragraph
