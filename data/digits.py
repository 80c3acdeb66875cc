"""scikit-learn's bundled 8×8 handwritten digits as small RGB images: the whole pipeline runs without a download
or a network, in seconds on a CPU."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from data.base import ImageDataset

SPLITS = ("train", "test")
MAX_PIXEL = 16  # load_digits() pixel values lie in 0..16


def subsample_classes(indices: np.ndarray, targets: np.ndarray, fractions: dict, seed: int) -> np.ndarray:
    """Keep round(fraction × count) of each named class's `indices` (at least one), chosen with `seed`."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(indices), dtype=bool)
    for digit, fraction in fractions.items():
        if int(digit) not in range(10) or not 0 < float(fraction) <= 1:
            raise ValueError(f"class_fraction maps a digit 0-9 to a fraction in (0, 1], got {digit}: {fraction}.")
        members = np.flatnonzero(targets[indices] == int(digit))
        dropped = rng.permutation(members)[max(1, round(float(fraction) * len(members))) :]
        keep[dropped] = False
    return indices[keep]


class Digits(ImageDataset):
    """The 1,797 digits of ``sklearn.datasets.load_digits``, split (stratified, fixed by ``seed``) into train/test.
    ``class_fraction`` (e.g. ``{3: 0.2}``) keeps a seeded fraction of a digit's images in both splits, for unequal
    classes. Images become uint8 RGB resized to ``image_size`` (bicubic), so the CIFAR-style transforms and models apply
    unchanged; ``root`` is ignored (the constructor shape of the others)."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
        image_size: int = 16,
        seed: int = 0,
        test_fraction: float = 0.2,
        class_fraction: dict[int, float] | None = None,
    ) -> None:
        super().__init__(transform)
        if split not in SPLITS:
            raise ValueError(f"Digits split must be one of {SPLITS}, got {split!r}")
        digits = load_digits()
        train_indices, test_indices = train_test_split(
            np.arange(len(digits.target)), test_size=test_fraction, stratify=digits.target, random_state=seed
        )
        indices = train_indices if split == "train" else test_indices
        if class_fraction:
            indices = subsample_classes(indices, digits.target, class_fraction, seed)
        # Positions in load_digits(), kept in increasing order so sample i is easy to trace back.
        self.indices = sorted(indices.tolist())
        self.classes = [str(digit) for digit in range(10)]
        self.targets = [int(digits.target[i]) for i in self.indices]
        pixels = np.round(digits.images[self.indices] * (255 / MAX_PIXEL)).astype(np.uint8)
        size = (image_size, image_size)
        self.images = np.stack(
            [np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC).convert("RGB")) for image in pixels]
        )

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])
