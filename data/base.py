"""What every dataset reader shares: the sample format ``{'image', 'target', 'meta'}`` of :class:`ImageDataset`
(a reader only says how to fetch the raw RGB image of an index), the error for missing data, the download step."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image
from torchvision.datasets.utils import download_and_extract_archive

from utils.errors import UserError

UNLABELED = -1


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset folder is missing, incomplete or holds a malformed file (a FileNotFoundError, so callers that
    handle missing files keep working); :func:`dataset_error` builds its message."""


def dataset_error(dataset: str, folder: Path, problem: str, layout: str, hint: str) -> DatasetNotFoundError:
    """The error a user can act on without reading code: where we looked, the expected ``layout`` (a small tree
    relative to ``folder``'s parent, the ``root`` argument), what to do."""
    tree = "\n".join("    " + line for line in layout.splitlines())
    message = f"{dataset}: {problem}\nLooked in: {folder}\nExpected layout:\n  {folder.parent}/\n{tree}\n{hint}"
    return DatasetNotFoundError(message)


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: where it unpacks, where to get it, and how to explain its absence."""

    dataset: str  # e.g. "CIFAR-10", used in messages
    description: str  # what to download, in words, e.g. "the CIFAR-10 python version"
    folder: str  # the folder the archive unpacks to, inside ``root``
    url: str
    filename: str
    md5: str
    layout: str  # expected tree below ``root``, for messages

    def error(self, root: Path, problem: str) -> DatasetNotFoundError:
        hint = (
            f"Download {self.description} ({self.url}) and extract it into {root}, "
            "or set `download: true` in configs/env.yml when online."
        )
        return dataset_error(self.dataset, root / self.folder, problem, self.layout, hint)

    def ensure(self, root: Path, find_problem: Callable[[Path], str | None], download: bool) -> None:
        """Raise the clear error unless the folder exists and ``find_problem(folder)`` is None; with ``download``
        the archive is fetched once first, and any download failure becomes the dataset's own message."""
        folder = root / self.folder

        def check() -> str | None:
            return find_problem(folder) if folder.is_dir() else "folder not found"

        problem = check()
        if problem and download:
            try:
                download_and_extract_archive(self.url, str(root), filename=self.filename, md5=self.md5)
            except Exception as exc:  # noqa: BLE001 - see docstring
                raise DatasetNotFoundError(
                    f"{self.error(root, problem)}\nDownload from {self.url} failed: {exc!r}"
                ) from exc
            problem = check()
        if problem:
            raise self.error(root, problem)


class ImageDataset(torch.utils.data.Dataset):
    """Base class: subclasses set ``classes`` and ``targets`` and implement :meth:`load_image`; the stages swap
    ``transform`` on one dataset (augmented views for training, the val transform for features)."""

    classes: list[str]
    targets: list[int]

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform

    def load_image(self, index: int) -> Image.Image:
        """Return the raw RGB image of sample ``index`` (before any transform)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.load_image(index)
        target = self.targets[index]
        meta = {
            "im_size": (image.height, image.width),
            "index": index,
            "class_name": "unlabeled" if target == UNLABELED else self.classes[target],
        }
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "target": target, "meta": meta}

    def get_image(self, index: int) -> np.ndarray:
        """The untransformed image as an H×W×3 uint8 array, e.g. to draw cluster prototypes."""
        return np.asarray(self.load_image(index), dtype=np.uint8)

    @property
    def has_labels(self) -> bool:
        """False for unlabeled splits (every target is -1), where accuracy cannot be measured."""
        return any(target != UNLABELED for target in self.targets)
