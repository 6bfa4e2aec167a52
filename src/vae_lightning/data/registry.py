"""What we know about each dataset, in one place: one entry per dataset.

Everything else (the data module, checksum checks, legends, config validation) looks facts up
here, so adding a dataset costs one entry. Facts that depend on how a dataset is stored sit in
a group of their own: :class:`IdxStorage` for the MNIST family's IDX files,
:class:`ArchiveStorage` for a dataset shipped as one archive file (CIFAR-10's python tarball,
DeepMind's dSprites ``.npz``), :class:`ImageFileStorage` for image files decoded into the
uint8 cache (image folders, CelebA); a dataset kept in another format adds its own group and
leaves the others ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vae_lightning.errors import ConfigError


@dataclass(frozen=True)
class IdxStorage:
    """A dataset stored as IDX files (images and labels per split), as torchvision ships it.

    ``torchvision_class`` names the ``torchvision.datasets`` class that downloads the files and
    lists their published MD5s (its ``resources``); it also names torchvision's download folder
    ``<root>/<torchvision_class>/raw/``. ``extra_md5`` holds further accepted MD5s per ``.gz``
    file name, for copies that hold the same images in other bytes.
    """

    torchvision_class: str
    split_files: Mapping[str, tuple[str, str]]
    extra_md5: Mapping[str, str] = field(default_factory=dict)

    @property
    def raw_folder(self) -> str:
        """torchvision's download folder, relative to the data root."""
        return f"{self.torchvision_class}/raw"

    @property
    def file_names(self) -> list[str]:
        """Every file name of every split (without ``.gz``)."""
        return [name for pair in self.split_files.values() for name in pair]


@dataclass(frozen=True)
class ArchiveStorage:
    """A dataset shipped as one archive file, fetched from ``url`` as ``file_name``.

    ``torchvision_class`` names the ``torchvision.datasets`` class that downloads it and lists
    its published MD5s (CIFAR10's ``tgz_md5``, and per extracted file ``train_list`` and
    ``test_list``); ``None`` when torchvision does not know the dataset (then nothing is
    downloaded and no checksum is published).
    """

    file_name: str
    url: str
    torchvision_class: str | None = None


@dataclass(frozen=True)
class ImageFileStorage:
    """A dataset stored as image files, decoded once into the uint8 cache (data/decode_cache.py).

    ``image_folder`` and ``partition_file`` are where torchvision's ``torchvision_class``
    keeps the images and the list of official splits, relative to the data root (None: any
    folder, split by the data module); ``crop`` is the side of the centre square cut out
    before resizing, as the literature does for this dataset (None: no crop).
    """

    image_folder: str | None = None
    partition_file: str | None = None
    crop: int | None = None
    torchvision_class: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its name in configs (``data.dataset``), the title people know it by, its
    class names by label, the shape of one image (channels, height, width) and its storage."""

    name: str
    title: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    idx: IdxStorage | None = None
    archive: ArchiveStorage | None = None
    images: ImageFileStorage | None = None


# Both MNIST and Fashion-MNIST use these file names (which is why checksums.py can tell a
# Fashion-MNIST file in an MNIST folder from the real one only by its bytes).
MNIST_FORMAT_FILES = MappingProxyType(
    {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
)

# Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1, which fills
# /usr/share/datasets/fashion-mnist) re-compresses the original files: same images, other
# .gz bytes. Measured with md5sum on the installed package.
DEBIAN_FASHION_MNIST_MD5 = MappingProxyType(
    {
        "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
        "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
        "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
        "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
    }
)

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            DatasetInfo(
                name="mnist",
                title="MNIST",
                class_names=tuple(str(digit) for digit in range(10)),
                image_shape=(1, 28, 28),
                idx=IdxStorage("MNIST", MNIST_FORMAT_FILES),
            ),
            DatasetInfo(
                name="fashion_mnist",
                title="Fashion-MNIST",
                class_names=(
                    "T-shirt/top",
                    "Trouser",
                    "Pullover",
                    "Dress",
                    "Coat",
                    "Sandal",
                    "Shirt",
                    "Sneaker",
                    "Bag",
                    "Ankle boot",
                ),
                image_shape=(1, 28, 28),
                idx=IdxStorage("FashionMNIST", MNIST_FORMAT_FILES, DEBIAN_FASHION_MNIST_MD5),
            ),
            DatasetInfo(
                name="cifar10",
                title="CIFAR-10",
                class_names=(
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ),
                image_shape=(3, 32, 32),
                archive=ArchiveStorage(
                    "cifar-10-python.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    torchvision_class="CIFAR10",
                ),
            ),
            # Generated (data/dsprites.py); DeepMind's file is read instead when it is there.
            # The label is the shape; every factor is in DSpritesDataModule.factors.
            DatasetInfo(
                name="dsprites",
                title="dSprites",
                class_names=("square", "ellipse", "heart"),
                image_shape=(1, 64, 64),
                archive=ArchiveStorage(
                    "dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz",
                    "https://github.com/google-deepmind/dsprites-dataset/raw/master/"
                    "dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz",
                ),
            ),
            # Classes are the folder's sub-folder names, known only once it is scanned.
            DatasetInfo(
                name="image_folder",
                title="Image folder",
                class_names=(),
                image_shape=(3, 64, 64),
                images=ImageFileStorage(),
            ),
            # Aligned CelebA, centre crop 148 then 64x64 (beta-VAE papers, AntixK PyTorch-VAE).
            DatasetInfo(
                name="celeba",
                title="CelebA",
                class_names=("face",),
                image_shape=(3, 64, 64),
                images=ImageFileStorage(
                    image_folder="celeba/img_align_celeba",
                    partition_file="celeba/list_eval_partition.txt",
                    crop=148,
                    torchvision_class="CelebA",
                ),
            ),
        )
    }
)


class UnknownDatasetError(ConfigError):
    """``data.dataset`` names no registered dataset."""


def dataset_names() -> list[str]:
    """The names ``data.dataset`` accepts, in registry order."""
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an error listing the known names if there is none."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from a config
        raise UnknownDatasetError(
            f"data.dataset={name!r} is not a known dataset; choose one of "
            f"{', '.join(dataset_names())} (data=<name> picks its config group)."
        ) from None


def class_names(dataset: str | None, num_classes: int = 10) -> list[str]:
    """Names of the classes of ``dataset``, by label; the label numbers themselves for a
    dataset the registry does not know (a user's own data module)."""
    info = DATASETS.get(dataset or "")
    if info is None:
        return [str(label) for label in range(num_classes)]
    return list(info.class_names)
