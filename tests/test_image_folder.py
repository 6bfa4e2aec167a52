"""data=image_folder on generated PNG/JPEG/WebP folders: decoding, labels, splits, bad input,
the decode cache (reuse, staleness, interrupted builds, memory mapping) and a real run."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from helpers.images import (
    folder_config,
    folder_train_run,
    image_folder_data,
    pattern,
    save,
    write_corrupt,
    write_image_folder,
    write_truncated,
)
from helpers.paths import CONF_DIR, PROJECT_ROOT
from vae_lightning.config_checks import build_checked_model, check_config
from vae_lightning.configs import compose_as_launched
from vae_lightning.data import ImageFolderDataModule
from vae_lightning.data.decode_cache import TEMP_PREFIX, choose_cache_dir, decoded_images
from vae_lightning.data.image_files import DecodeSettings, ImageFolderError, scan_images
from vae_lightning.data.image_folder import MappedImages
from vae_lightning.errors import ConfigError, UserError
from vae_lightning.evaluate import evaluate


def folder_module(root, size=16, channels=3, **options):
    options.setdefault("binarize", "none")
    dm = ImageFolderDataModule(
        root=str(root),
        image_size=size,
        channels=channels,
        image_shape=(channels, size, size),
        decode_workers=2,
        **options,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images}


def cache_entries(root):
    return sorted(p for p in (root / ".vae_cache").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 12 images of 16x16 RGB, PNG/JPEG/WebP taking turns."""
    return write_image_folder(tmp_path_factory.mktemp("folder") / "images")


def test_every_format_decodes_and_sub_folders_are_the_labels(folder):
    dm = folder_module(folder)
    assert dm.class_names == ["cat", "dog", "fox"]
    images = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")])
    labels = torch.cat([dm.splits[s][1] for s in ("train", "val", "test")])
    assert images.shape == (36, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [12, 12, 12]
    # Every format decodes to what Pillow itself reads from the file; the lossless ones
    # (PNG, lossless WebP) to exactly the pixels written.
    for name in ("dog/000.png", "dog/001.jpg", "dog/002.webp"):
        read = np.asarray(Image.open(folder / name).convert("RGB")).transpose(2, 0, 1)
        assert any(torch.equal(image, torch.from_numpy(read.copy())) for image in images)
        if not name.endswith(".jpg"):
            assert np.array_equal(
                read.transpose(1, 2, 0), pattern(1, (16, 16), seed=100 + int(name[4:7]))
            )


def test_split_is_seeded_disjoint_and_independent_of_file_system_order(folder, tmp_path):
    dm = folder_module(folder)
    sizes = {name: len(images) for name, (images, _) in dm.splits.items()}
    assert sizes == {"train": 28, "val": 4, "test": 4}  # round(0.1 * 36) each
    seen = [rows(dm.splits[s][0]) for s in ("train", "val", "test")]
    assert len(set.union(*seen)) == 36 and not (seen[0] & seen[1] or seen[0] & seen[2])
    # The same files created in the opposite order (another listing order) split the same.
    reversed_copy = tmp_path / "reversed"
    for path in sorted(folder.rglob("*.*"), reverse=True):
        if ".vae_cache" not in path.parts:
            (reversed_copy / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, reversed_copy / path.relative_to(folder))
    again = folder_module(reversed_copy)
    for split in ("train", "val", "test"):
        assert torch.equal(dm.splits[split][0], again.splits[split][0])
    other_seed = folder_module(folder, split_seed=7)
    assert rows(other_seed.splits["val"][0]) != seen[1]


def test_train_val_test_folders_are_the_splits(tmp_path):
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / split, classes=("a", "b"), per_class=count, seed=count)
    dm = folder_module(tmp_path, split="folders")
    assert {s: len(dm.splits[s][0]) for s in dm.splits} == {"train": 12, "val": 4, "test": 6}
    assert dm.class_names == ["a", "b"] and dm.sources["val"] == tmp_path / "val"
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(ConfigError, match=r"test/ holds no images \(data.split=folders"):
        folder_module(tmp_path, split="folders")


def test_images_directly_in_the_folder_are_one_class_with_label_0(tmp_path):
    for n in range(10):
        save(tmp_path / f"{n}.png", pattern(n % 3, (16, 16), seed=n))
    dm = folder_module(tmp_path)
    assert dm.class_names == ["."]
    assert all(set(labels.tolist()) == {0} for _, labels in dm.splits.values())


def test_an_empty_folder_and_a_folder_without_images_are_clear_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="is not a folder"):
        folder_module(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "labels.csv").write_text("a,b\n")
    with pytest.raises(ImageFolderError) as info:
        folder_module(tmp_path)
    message = str(info.value)
    assert f"No images found in {tmp_path}: 2 file(s), none of them" in message
    assert ".png" in message and "data.root" in message


def test_non_image_files_are_ignored(tmp_path):
    write_image_folder(tmp_path, classes=("a",), per_class=10)
    for name in ("a/readme.txt", "a/.DS_Store", "a/meta.json", "a/image.png.bak", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"\x00not an image")
    dm = folder_module(tmp_path)
    assert sum(len(images) for images, _ in dm.splits.values()) == 10


@pytest.fixture
def with_bad_files(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=4)
    truncated = write_truncated(root / "cat" / "truncated.png")
    corrupt = write_corrupt(root / "dog" / "corrupt.jpg")
    return root, truncated, corrupt


def test_corrupt_and_truncated_images_are_listed_by_path(with_bad_files):
    root, truncated, corrupt = with_bad_files
    with pytest.raises(ImageFolderError) as info:
        folder_module(root)
    message = str(info.value)
    assert message.startswith(f"2 image file(s) under {root} cannot be decoded")
    assert str(truncated) in message and str(corrupt) in message
    assert "data.on_bad_image=skip" in message and isinstance(info.value, UserError)
    assert not cache_entries(root)  # nothing cached that a later run could trust


def test_bad_images_are_skipped_when_asked_and_the_cache_remembers_them(with_bad_files, caplog):
    root, truncated, corrupt = with_bad_files
    with caplog.at_level(logging.INFO):
        dm = folder_module(root, on_bad_image="skip")
    assert sum(len(images) for images, _ in dm.splits.values()) == 12
    assert "Skipped 2 unreadable image(s)" in caplog.text and str(corrupt) in caplog.text
    # The cache built with skip is never used to hide bad files from on_bad_image=fail.
    with pytest.raises(ImageFolderError, match="2 image file"):
        folder_module(root, on_bad_image="fail")


def test_greyscale_among_colour_becomes_the_requested_channels(tmp_path):
    write_image_folder(tmp_path, classes=("a",), per_class=9)
    grey = pattern(0, (16, 16), seed=5, channels=1)
    save(tmp_path / "a" / "grey.png", grey)
    colour = folder_module(tmp_path, val_fraction=0.2, test_fraction=0.2)
    images = torch.cat([colour.splits[s][0] for s in ("train", "val", "test")])
    as_rgb = torch.from_numpy(grey).expand(3, 16, 16)
    assert any(torch.equal(image, as_rgb) for image in images)
    single = folder_module(tmp_path, channels=1, val_fraction=0.2, test_fraction=0.2)
    single_images = torch.cat([single.splits[s][0] for s in ("train", "val", "test")])
    assert single_images.shape == (10, 1, 16, 16)
    # Colour to one channel is Pillow's ITU-R 601-2 luma ("L"), checked on a written PNG.
    rgb = pattern(0, (16, 16), seed=0)
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert any(torch.equal(image[0], torch.from_numpy(luma)) for image in single_images)


def test_mixed_sizes_are_resized_or_named_when_resizing_is_off(tmp_path):
    write_image_folder(tmp_path, classes=("a",), per_class=8)
    wide = save(tmp_path / "a" / "wide.png", pattern(0, (40, 20), seed=1))
    small = save(tmp_path / "a" / "small.jpg", pattern(0, (8, 8), seed=2))
    dm = folder_module(tmp_path)
    assert sum(len(images) for images, _ in dm.splits.values()) == 10
    # Shorter side to 16, centre square: the 40x20 image is scaled to 32x16 and its centre
    # 16 columns kept, which is what Pillow gives for that resize and crop.
    expected = Image.open(wide).resize((32, 16), Image.Resampling.BILINEAR).crop((8, 0, 24, 16))
    expected = torch.from_numpy(np.asarray(expected)).permute(2, 0, 1)
    images = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")])
    assert any(torch.equal(image, expected) for image in images)
    with pytest.raises(ImageFolderError) as info:
        folder_module(tmp_path, resize=False)
    message = str(info.value)
    assert message.startswith(f"2 image(s) under {tmp_path} are not 16x16 pixels")
    assert f"{wide} (40x20)" in message and f"{small} (8x8)" in message


def test_the_second_run_loads_the_cache_without_decoding(folder, caplog):
    entry = folder_module(folder).decoded.entry  # built here if no other test did
    built = (entry / "images.u8").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        dm = folder_module(folder)
    assert "Decoding" not in caplog.text
    assert (entry / "images.u8").stat().st_mtime_ns == built and dm.decoded.entry == entry
    # Other decode settings are another entry, next to the first.
    other = folder_module(folder, size=8).decoded.entry
    assert other != entry and entry.is_dir()


def test_a_stale_cache_is_rebuilt_never_reused(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images", classes=("a",), per_class=10)
    first = folder_module(root)
    (old_entry,) = cache_entries(root)
    changed = root / "a" / "000.png"
    new_pixels = np.full((16, 16, 3), 128, dtype=np.uint8)
    save(changed, new_pixels)
    # An old mtime: what counts is that the file differs from its fingerprint, not that it
    # is newer than the cache.
    os.utime(changed, ns=(1, 1))
    with caplog.at_level(logging.INFO):
        second = folder_module(root)
    assert "the files changed since" in caplog.text
    (new_entry,) = cache_entries(root)
    assert new_entry != old_entry  # the stale entry was replaced
    grey = torch.full((3, 16, 16), 128, dtype=torch.uint8)
    all_rows = [torch.cat([dm.splits[s][0] for s in dm.splits]) for dm in (first, second)]
    assert not any(torch.equal(row, grey) for row in all_rows[0])
    assert any(torch.equal(row, grey) for row in all_rows[1])


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images", classes=("a",), per_class=10)
    first = folder_module(root)
    (entry,) = cache_entries(root)
    data = (entry / "images.u8").read_bytes()
    (entry / "images.u8").write_bytes(data[:100])
    with caplog.at_level(logging.INFO):
        again = folder_module(root)
    assert "is not usable (images.u8 holds 100 bytes" in caplog.text
    assert torch.equal(first.splits["train"][0], again.splits["train"][0])


def test_an_interrupted_build_leaves_nothing_a_later_run_trusts(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=10)
    files, settings = scan_images(root), DecodeSettings(16, 3)
    cache_dir = choose_cache_dir(root, None)

    def interrupt(done: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decoded_images(root, files, settings, cache_dir=cache_dir, progress=interrupt)
    assert not list(cache_dir.iterdir())  # no entry, and the temporary folder is gone

    # A build killed outright (SIGKILL: no cleanup runs) leaves only its temporary folder.
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from vae_lightning.data.decode_cache import decoded_images
        from vae_lightning.data.image_files import DecodeSettings, scan_images
        root = Path({str(root)!r})
        def kill(done):
            if done == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        decoded_images(root, scan_images(root), DecodeSettings(16, 3),
                       cache_dir=Path({str(cache_dir)!r}), progress=kill)
    """)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    killed = subprocess.run([sys.executable, "-c", script], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    leftovers = list(cache_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(TEMP_PREFIX)
    decoded = decoded_images(root, files, settings, cache_dir=cache_dir)
    assert [p.name for p in cache_dir.iterdir()] == [decoded.entry.name]  # leftover removed
    reference = np.stack(
        [
            np.asarray(Image.open(root / image.relative).convert("RGB")).transpose(2, 0, 1)
            for image in files
        ]
    )
    assert torch.equal(decoded.images, torch.from_numpy(reference))


def test_copied_splits_release_the_loaded_array(folder):
    """A random split copies rows; the whole loaded array is then freed, not kept by a view."""
    dm = folder_module(folder)
    assert not dm.decoded.mapped and dm.decoded.images.untyped_storage().nbytes() == 0
    for images, _ in dm.splits.values():
        assert images.untyped_storage().nbytes() == images.numel()


def test_a_set_larger_than_max_memory_gb_is_memory_mapped(folder):
    in_memory = folder_module(folder)
    mapped = folder_module(folder, max_memory_gb=1e-6)
    train_images = mapped.splits["train"][0]
    assert mapped.decoded.mapped and isinstance(train_images, MappedImages)
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.exists():  # Linux: the cache file is mapped into this process
        assert str(mapped.decoded.entry / "images.u8") in maps.read_text()
    assert len(train_images) == 28 and train_images.shape == (28, 3, 16, 16)
    for split in ("train", "val"):
        loader = getattr(mapped, f"{split}_dataloader")()
        reference = getattr(in_memory, f"{split}_dataloader")()
        for (images, labels), (ref_images, ref_labels) in zip(loader, reference, strict=True):
            assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    with pytest.raises(ConfigError, match="memory-mapped, and data.binarize=static"):
        folder_module(folder, max_memory_gb=1e-6, binarize="static")


def test_a_read_only_data_folder_caches_in_the_user_cache(folder, tmp_path, monkeypatch, caplog):
    """Tests run as root, which may write anywhere: a file named .vae_cache stands in for a
    folder that cannot be written to."""
    root = tmp_path / "images"
    shutil.copytree(folder, root, ignore=shutil.ignore_patterns(".vae_cache"))
    (root / ".vae_cache").write_text("in the way")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    with caplog.at_level(logging.INFO):
        dm = folder_module(root)
    assert dm.decoded.entry.is_relative_to(tmp_path / "user-cache" / "vae_lightning")
    assert "is read-only, so its decoded images are cached in" in caplog.text


def test_bad_fractions_and_shapes_are_config_errors(folder):
    with pytest.raises(ConfigError, match="leaves no images for training"):
        folder_module(folder, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"The val split of .* is empty: 36 images"):
        folder_module(folder, val_fraction=0.01)
    with pytest.raises(ConfigError, match="does not match the decoded images"):
        ImageFolderDataModule(root=str(folder), image_size=16, image_shape=(3, 32, 32))


def test_hydra_composition_builds_the_module_from_data_keys(folder, tmp_path):
    overrides = image_folder_data(folder, "data.image_size=8", "data.channels=1")
    cfg = folder_config(tmp_path, overrides)
    assert list(cfg.data.image_shape) == [1, 8, 8]
    assert list(cfg.model.net.image_shape) == [1, 8, 8]
    check_config(cfg)  # every key checked against ImageFolderDataModule's signature
    # The model check reads data.image_shape through its interpolations (a regression: it
    # used to see the strings '${data.channels}', ...).
    cfg = folder_config(tmp_path, [*overrides, "likelihood=bernoulli", "data.binarize=dynamic"])
    parts = {key: cfg[key] for key in ("optimizer", "likelihood", "objective", "test_iwae_k")}
    build_checked_model(cfg, lambda: instantiate(cfg.model, **parts))  # ConfigError if not
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageFolderDataModule) and dm.settings == DecodeSettings(8, 1)
    with pytest.raises(ConfigError, match="Missing mandatory value: data.root"):
        check_config(folder_config(tmp_path, ["data=image_folder"]))
    with pytest.raises(ConfigError, match="data.channels"):
        check_config(folder_config(tmp_path, [*overrides, "data.channels=2"]))


def test_a_training_run_through_the_image_folder(folder, tmp_path):
    run = folder_train_run(
        tmp_path / "run",
        image_folder_data(
            folder,
            "debug=fast",
            "~callbacks.progress_bar",
            "trainer.limit_train_batches=2",
            "report=false",
            "test_iwae_k=2",
        ),
    )
    assert np.isfinite(run.metrics["val/elbo"]) and np.isfinite(run.metrics["test/elbo"])
    assert run.cfg.data._target_ == "vae_lightning.data.ImageFolderDataModule"
    # The projector's legend names the folder's classes (the registry cannot know them).
    (metadata,) = run.dir.rglob("metadata.tsv")
    assert {line.split("\t")[1] for line in metadata.read_text().splitlines()[1:]} <= {
        "cat",
        "dog",
        "fox",
    }
    # vae-eval rebuilds the run's data module from its recorded config: the same test numbers.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        report = evaluate(
            compose_as_launched(
                "eval",
                [
                    f"ckpt_path={run.dir / 'checkpoints' / 'epoch_000.ckpt'}",
                    f"paths.output_dir={tmp_path}",
                    f"paths.log_dir={tmp_path}",
                    "eval.progress_bar=false",
                    "eval.batch_size=8",
                    "eval.iwae_k=2",
                ],
            )
        )
    assert report["test/elbo"] == pytest.approx(run.metrics["test/elbo"], abs=1e-3)
    assert report["data"]["dataset"] == "image_folder" and report["data"]["split"] == "random"
    assert report["data"]["files"]["test"] == str(folder)
