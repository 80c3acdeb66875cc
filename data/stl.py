"""STL-10 read from the official binary files (``stl10_binary/``), one seek per sample: ``unlabeled_X.bin`` is
2.7 GB, too much for memory and every DataLoader worker. A file cut short by whole images still loads."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from data.base import UNLABELED, Archive, ImageDataset

IMAGE_BYTES = 3 * 96 * 96

STL10_ARCHIVE = Archive(
    dataset="STL-10",
    description="the STL-10 binary version",
    folder="stl10_binary",
    url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    filename="stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
    layout=(
        "stl10_binary/\n  train_X.bin\n  train_y.bin\n  test_X.bin\n  test_y.bin\n"
        "  unlabeled_X.bin\n  class_names.txt\n  fold_indices.txt"
    ),
)

# Each split is a concatenation of file prefixes; SCAN's pretext step trains on train followed by unlabeled.
SPLITS = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"], "train+unlabeled": ["train", "unlabeled"]}


def read_image(path: Path, position: int) -> np.ndarray:
    """Image ``position`` of an ``*_X.bin`` file as H×W×3 uint8; stored channel by channel, each column by column
    (Matlab order), hence the transpose."""
    raw = np.fromfile(path, dtype=np.uint8, count=IMAGE_BYTES, offset=position * IMAGE_BYTES)
    return np.ascontiguousarray(raw.reshape(3, 96, 96).transpose(2, 1, 0))


class STL10(ImageDataset):
    """STL-10 from ``root/stl10_binary/``: 5k train, 8k test, 100k unlabeled images of 96×96, 10 classes. ``split`` is
    'train', 'test', 'unlabeled' (targets -1) or 'train+unlabeled' (train first)."""

    def __init__(
        self, root: str | Path, split: str = "train", transform: Callable | None = None, download: bool = False
    ) -> None:
        super().__init__(transform)
        if split not in SPLITS:
            raise ValueError(f"STL-10 split must be one of {sorted(SPLITS)}, got {split!r}")
        root = Path(root)
        prefixes = SPLITS[split]
        needed = ["class_names.txt"] + [f"{prefix}_X.bin" for prefix in prefixes]
        needed += [f"{prefix}_y.bin" for prefix in prefixes if prefix != "unlabeled"]

        def find_problem(folder: Path) -> str | None:
            missing = [name for name in needed if not (folder / name).is_file()]
            return f"missing {', '.join(missing)}" if missing else None

        STL10_ARCHIVE.ensure(root, find_problem, download)
        folder = root / STL10_ARCHIVE.folder
        class_lines = (folder / "class_names.txt").read_text().splitlines()
        self.classes = [line.strip() for line in class_lines if line.strip()]

        self.parts: list[tuple[Path, int]] = []  # (image file, number of images), in sample order
        self.targets = []
        for prefix in prefixes:
            images_path = folder / f"{prefix}_X.bin"
            size = images_path.stat().st_size
            if size % IMAGE_BYTES:
                raise STL10_ARCHIVE.error(
                    root, f"{images_path.name} is malformed: {size} bytes is not a multiple of {IMAGE_BYTES} (3×96×96)"
                )
            count = size // IMAGE_BYTES
            self.parts.append((images_path, count))
            if prefix == "unlabeled":
                self.targets += [UNLABELED] * count
            else:
                self.targets += self.read_labels(root, folder / f"{prefix}_y.bin", count)

    def read_labels(self, root: Path, path: Path, count: int) -> list[int]:
        """Labels are one byte each, 1..10 on disk; shift them to 0..9 and check they match the images."""
        labels = np.fromfile(path, dtype=np.uint8).astype(int)
        if len(labels) != count:
            raise STL10_ARCHIVE.error(root, f"{path.name} is malformed: {len(labels)} labels for {count} images")
        if len(labels) and not (labels.min() >= 1 and labels.max() <= len(self.classes)):
            raise STL10_ARCHIVE.error(
                root, f"{path.name} is malformed: labels must lie in 1..{len(self.classes)} (class_names.txt)"
            )
        return (labels - 1).tolist()

    def load_image(self, index: int) -> Image.Image:
        position = index
        for path, count in self.parts:
            if position < count:
                return Image.fromarray(read_image(path, position))
            position -= count
        raise IndexError(f"index {index} out of range for STL-10 split of {len(self)} images")
