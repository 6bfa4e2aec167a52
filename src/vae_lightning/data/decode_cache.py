"""Decode a set of image files once into a uint8 cache; later runs load (or map) the cache.

A cache entry is a folder ``<cache_dir>/<settings tag>-<fingerprint>/`` holding ``images.u8``
(the rows, raw uint8 (N, C, H, W) in file order) and ``meta.json``. The fingerprint hashes
every file's relative path, size and mtime together with the decode settings, so any change
of the files or the settings names another entry: a stale cache is never reused, it is
rebuilt (and the stale entry of the same settings removed, with a note). An entry is built
in a temporary folder and renamed into place only once complete, so an interrupted build
(an exception, Ctrl-C, a killed job) never leaves a cache that a later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from tqdm import tqdm

from vae_lightning.data.image_files import (
    DecodeSettings,
    ImageFile,
    ImageFolderError,
    decode_error,
)

CACHE_FORMAT = 1  # bump when the layout or the decoding changes: old entries then go unused
IMAGES_FILE, META_FILE = "images.u8", "meta.json"
TEMP_PREFIX = ".building-"
OnBadImage = Literal["fail", "skip"]
# At most this many paths are listed in an error message; the rest are counted.
LISTED_PATHS = 20


def fingerprint(files: Sequence[ImageFile], settings: DecodeSettings) -> str:
    """A hash of the files (relative path, size, mtime) and the decode settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, **asdict(settings)}).encode())
    for image in files:
        digest.update(f"\n{image.relative}\0{image.size}\0{image.mtime_ns}".encode())
    return digest.hexdigest()


def user_cache_dir(root: Path) -> Path:
    """The fallback cache folder for a data folder that cannot be written to."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / "vae_lightning" / f"{root.resolve().name}-{key}"


def is_writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (made if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def choose_cache_dir(root: Path, cache_dir: str | Path | None) -> Path:
    """``cache_dir`` if given, else ``<root>/.vae_cache``; a user cache folder, with a note,
    when the data folder is read-only."""
    if cache_dir is not None:
        folder = Path(cache_dir)
        if not is_writable(folder):
            raise ImageFolderError(
                f"data.cache_dir={folder} cannot be written to. Point data.cache_dir at a "
                "writable folder (or leave it null to cache next to the images)."
            )
        return folder
    beside = root / ".vae_cache"
    if is_writable(beside):
        return beside
    fallback = user_cache_dir(root)
    rank_zero_info(
        f"{root} is read-only, so its decoded images are cached in {fallback} instead "
        "(set data.cache_dir to choose another folder)."
    )
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


@dataclass
class DecodedImages:
    """The decoded rows of a file list: ``images[r]`` is ``files[kept[r]]``."""

    images: Tensor  # uint8 (N, C, H, W), in memory or memory-mapped (``mapped``)
    kept: list[int]
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> why
    entry: Path | None = None
    mapped: bool = False


def listed(paths: Sequence[str], root: Path) -> str:
    """Up to LISTED_PATHS paths under root, then how many more."""
    shown = "; ".join(str(root / path) for path in paths[:LISTED_PATHS])
    more = len(paths) - LISTED_PATHS
    return shown + (f"; and {more} more" if more > 0 else "")


def bad_images_error(root: Path, reasons: dict[str, str]) -> ImageFolderError:
    items = [f"{path} ({why})" for path, why in reasons.items()]
    return ImageFolderError(
        f"{len(reasons)} image file(s) under {root} cannot be decoded (corrupt, truncated or "
        f"not images): {listed(items, root)}. Replace or delete them, or set "
        "data.on_bad_image=skip to train without them (the skipped files are then listed in "
        "the log)."
    )


def wrong_size_error(root: Path, sizes: dict[str, str], settings: DecodeSettings) -> Exception:
    items = [f"{path} ({size})" for path, size in sizes.items()]
    side = settings.image_size
    return ImageFolderError(
        f"{len(sizes)} image(s) under {root} are not {side}x{side} pixels and data.resize=false "
        f"forbids resizing them: {listed(items, root)}. Set data.resize=true (the default: "
        f"shorter side scaled to {side}, centre square kept), or data.image_size to their "
        "size, or resize the files yourself."
    )


def read_meta(entry: Path, key: str, settings: DecodeSettings) -> dict | None:
    """The meta data of a complete, matching cache entry; None if there is none.

    Raises ValueError when the entry exists but does not match (damaged or foreign)."""
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / META_FILE).read_text())
        expected = meta["kept"] * math.prod(settings.shape)
        size = (entry / IMAGES_FILE).stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"unreadable ({err})") from err
    if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != key:
        raise ValueError("its fingerprint does not match")
    if size != expected:
        raise ValueError(f"{IMAGES_FILE} holds {size} bytes, expected {expected}")
    return meta


def remove_dead_builds(cache_dir: Path) -> None:
    """Delete temporary folders left by killed builds of this host (their process is gone)."""
    host = socket.gethostname()
    for folder in cache_dir.glob(f"{TEMP_PREFIX}*"):
        parts = folder.name[len(TEMP_PREFIX) :].split("@")
        if len(parts) != 3 or parts[1] != host or not parts[2].split(".")[0].isdigit():
            continue
        try:
            os.kill(int(parts[2].split(".")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def build_entry(
    root: Path,
    files: Sequence[ImageFile],
    settings: DecodeSettings,
    entry: Path,
    key: str,
    on_bad_image: OnBadImage,
    workers: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Decode ``files`` in parallel into ``entry`` (via a temporary folder)."""
    remove_dead_builds(entry.parent)
    temp = entry.parent / (
        f"{TEMP_PREFIX}{entry.name}@{socket.gethostname()}@{os.getpid()}.{uuid.uuid4().hex[:8]}"
    )
    temp.mkdir(parents=True)
    try:
        rows = np.memmap(
            temp / IMAGES_FILE, dtype=np.uint8, mode="w+", shape=(len(files), *settings.shape)
        )

        def decode_into(index: int, rows: np.memmap = rows) -> str | None:
            # Pillow releases the GIL while it decodes and resizes, so threads run in parallel.
            pixels, why = decode_error(root / files[index].relative, settings)
            if pixels is not None:
                rows[index] = pixels
            return why

        failures: dict[int, str] = {}
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(
                total=len(files), desc=f"Decoding images of {root}", unit="img", mininterval=1
            ) as bar,
        ):
            for index, why in enumerate(pool.map(decode_into, range(len(files)))):
                if why is not None:
                    failures[index] = why
                bar.update(1)
                if progress is not None:
                    progress(index + 1)
        sizes = {files[i].relative: why[5:] for i, why in failures.items() if why[:5] == "size "}
        if sizes:
            raise wrong_size_error(root, sizes, settings)
        skipped = {files[i].relative: why for i, why in failures.items()}
        if skipped and on_bad_image == "fail":
            raise bad_images_error(root, skipped)
        kept = [i for i in range(len(files)) if i not in failures]
        for row, index in enumerate(kept):  # close the gaps of skipped files, in place
            if row != index:
                rows[row] = rows[index]
        rows.flush()
        del rows
        os.truncate(temp / IMAGES_FILE, len(kept) * math.prod(settings.shape))
        meta = {
            "format": CACHE_FORMAT,
            "fingerprint": key,
            "settings": asdict(settings),
            "files": len(files),
            "kept": len(kept),
            "skipped": skipped,
        }
        (temp / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            temp.rename(entry)  # atomic: the entry appears complete or not at all
        except OSError:
            if not entry.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def load_entry(entry: Path, meta: dict, shape: tuple[int, ...], max_bytes: float) -> DecodedImages:
    """The rows of an entry, in memory or memory-mapped when larger than ``max_bytes``."""
    count = meta["kept"]
    path = entry / IMAGES_FILE
    mapped = count * math.prod(shape) > max_bytes
    if mapped:
        # Copy-on-write mapping: pages are read on demand and the file is never modified.
        array = np.memmap(path, dtype=np.uint8, mode="c", shape=(count, *shape))
    else:
        array = np.fromfile(path, dtype=np.uint8).reshape(count, *shape)
    skipped = meta["skipped"]
    return DecodedImages(torch.from_numpy(array), [], skipped, entry, mapped)


def decoded_images(
    root: Path,
    files: Sequence[ImageFile],
    settings: DecodeSettings,
    *,
    cache_dir: Path,
    on_bad_image: OnBadImage = "fail",
    max_memory_gb: float = 8.0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> DecodedImages:
    """``files`` (relative to ``root``) decoded under ``settings``: from the cache entry of
    their fingerprint in ``cache_dir``, built first when there is none.

    ``progress`` is called with the number of files decoded so far during a build.
    """
    key = fingerprint(files, settings)
    # Entries of one folder and one set of settings share this prefix: a cache_dir may serve
    # several folders, and only this folder's stale entries may be removed.
    where = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    prefix = f"{root.resolve().name}-{where}-{settings.tag}"
    entry = cache_dir / f"{prefix}-{key[:20]}"
    try:
        meta = read_meta(entry, key, settings)
    except ValueError as err:
        rank_zero_info(f"Decode cache {entry} is not usable ({err}): rebuilding it.")
        shutil.rmtree(entry, ignore_errors=True)
        meta = None
    if meta is None:
        stale = [
            folder
            for folder in cache_dir.glob(f"{prefix}-*")
            if folder != entry and folder.is_dir()
        ]
        why = (
            f"the files changed since {', '.join(f.name for f in stale)} was built"
            if stale
            else "no cache yet for these files and settings"
        )
        rank_zero_info(f"Decoding {len(files)} images of {root} into {entry} ({why}).")
        workers = workers or min(32, os.cpu_count() or 1)
        build_entry(root, files, settings, entry, key, on_bad_image, workers, progress)
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        meta = read_meta(entry, key, settings)
    if meta["skipped"] and on_bad_image == "fail":
        raise bad_images_error(root, meta["skipped"])
    decoded = load_entry(entry, meta, settings.shape, max_memory_gb * 2**30)
    skipped = set(meta["skipped"])
    decoded.kept = [i for i, image in enumerate(files) if image.relative not in skipped]
    if skipped:
        rank_zero_info(
            f"Skipped {len(skipped)} unreadable image(s) (data.on_bad_image=skip): "
            f"{listed(sorted(skipped), root)}"
        )
    return decoded
