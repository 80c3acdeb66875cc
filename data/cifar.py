"""CIFAR-10 and CIFAR-100-20 (the 20 superclasses of CIFAR-100), read from the official python pickles.

Files are read as they are found, without checksums, so a truncated copy (fewer images per file, or only
some of the five CIFAR-10 training batches) still loads: tests and quick experiments rely on that.
"""

import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from data.base import Archive, ImageDataset

IMAGE_BYTES = 3 * 32 * 32

CIFAR10_ARCHIVE = Archive(
    dataset="CIFAR-10",
    description="the CIFAR-10 python version",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    layout="cifar-10-batches-py/\n  data_batch_1 ... data_batch_5\n  test_batch\n  batches.meta",
)

CIFAR100_ARCHIVE = Archive(
    dataset="CIFAR-100-20",
    description="the CIFAR-100 python version",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    layout="cifar-100-python/\n  train\n  test\n  meta",
)

# Fine -> coarse table and superclass names; equal to the files' own `coarse_labels` (REFERENCE §6).
CIFAR20_TABLE = Path(__file__).parent / "cifar100_to_cifar20.json"


def load_pickle(path: Path, archive: Archive, root: Path) -> dict:
    """Unpickle one CIFAR file (written by Python 2: ``encoding='latin1'``); any failure means it is malformed."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - unpickling garbage can raise almost anything
        raise archive.error(root, f"{path.name} is malformed: cannot unpickle it ({exc!r})") from exc
    if not isinstance(entry, dict):
        raise archive.error(root, f"{path.name} is malformed: expected a dict, found {type(entry).__name__}")
    return entry


def read_batch(path: Path, label_key: str, archive: Archive, root: Path) -> tuple[np.ndarray, list[int]]:
    """(N×32×32×3 uint8 images, N labels) of one data file, whose rows hold the red, green, blue 32×32 planes."""
    entry = load_pickle(path, archive, root)
    for key in ("data", label_key):
        if key not in entry:
            raise archive.error(root, f"{path.name} is malformed: no '{key}' entry (found {sorted(entry)})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = [int(label) for label in entry[label_key]]
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(labels) != len(data):
        raise archive.error(
            root,
            f"{path.name} is malformed: 'data' has shape {data.shape} and there are {len(labels)} labels, "
            f"expected N×{IMAGE_BYTES} and N labels",
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class CIFAR10(ImageDataset):
    """CIFAR-10 from ``root/cifar-10-batches-py/``: 50k train / 10k test images of 32×32, 10 classes."""

    def __init__(
        self, root: str | Path, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        super().__init__(transform)
        root = Path(root)
        names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]

        def find_problem(folder: Path) -> str | None:
            if not (folder / "batches.meta").is_file():
                return "missing batches.meta"
            if not any((folder / name).is_file() for name in names):
                return "missing " + ", ".join(names)
            return None

        CIFAR10_ARCHIVE.ensure(root, find_problem, download)
        folder = root / CIFAR10_ARCHIVE.folder
        present = [name for name in names if (folder / name).is_file()]
        if len(present) < len(names):
            missing = sorted(set(names) - set(present))
            warnings.warn(
                f"CIFAR-10: {folder} lacks {', '.join(missing)}; loading only {', '.join(present)}", stacklevel=2
            )

        batches = [read_batch(folder / name, "labels", CIFAR10_ARCHIVE, root) for name in present]
        self.images = np.concatenate([images for images, _ in batches])
        self.targets = [label for _, labels in batches for label in labels]
        meta = load_pickle(folder / "batches.meta", CIFAR10_ARCHIVE, root)
        if "label_names" not in meta:
            raise CIFAR10_ARCHIVE.error(root, "batches.meta is malformed: no 'label_names' entry")
        self.classes = list(meta["label_names"])

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class CIFAR20(ImageDataset):
    """CIFAR-100 from ``root/cifar-100-python/`` labelled with its 20 superclasses (the paper's CIFAR-100-20)."""

    def __init__(
        self, root: str | Path, train: bool = True, transform: Callable | None = None, download: bool = False
    ) -> None:
        super().__init__(transform)
        root = Path(root)
        name = "train" if train else "test"

        def find_problem(folder: Path) -> str | None:
            return None if (folder / name).is_file() else f"missing {name}"

        CIFAR100_ARCHIVE.ensure(root, find_problem, download)
        folder = root / CIFAR100_ARCHIVE.folder
        self.images, fine_labels = read_batch(folder / name, "fine_labels", CIFAR100_ARCHIVE, root)
        table = json.loads(CIFAR20_TABLE.read_text())
        if not all(0 <= label < len(table["fine_to_coarse"]) for label in fine_labels):
            raise CIFAR100_ARCHIVE.error(root, f"{name} is malformed: fine labels outside 0..99")
        self.targets = [table["fine_to_coarse"][label] for label in fine_labels]
        self.classes = list(table["coarse_names"])

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])
