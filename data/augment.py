"""Image augmentations for the three SCAN stages: ``simclr`` (pretext, and ImageNet's SCAN step), ``ours`` (the
strong view of SCAN and self-labeling: RandAugment-style ``StrongAugment`` then ``Cutout``) and the val transform
(also self-labeling's weak view).

Randomness comes from python's ``random`` and torch's generator, never numpy's global one: DataLoader workers
reseed ``random`` and torch per worker but not numpy, so a numpy draw would repeat in every worker.
"""

import random
from collections.abc import Callable

import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms

from data.library_preprocessing import library_transform
from utils.library_names import is_library_backbone


def _random_sign(v: float) -> float:
    """Negate ``v`` with probability 0.5, as the geometric ops of the reference do."""
    return -v if random.random() < 0.5 else v


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


# (name, op(img, v), min magnitude, max magnitude); ops that ignore the magnitude keep (0, 1). The geometric ops
# take a random sign; the translations a fraction of the image's size, so they are resolution independent.
OPS: list[tuple[str, Callable[[Image.Image, float], Image.Image], float, float]] = [
    ("Identity", lambda img, v: img, 0, 1),
    ("AutoContrast", lambda img, v: ImageOps.autocontrast(img), 0, 1),
    ("Equalize", lambda img, v: ImageOps.equalize(img), 0, 1),
    ("Rotate", lambda img, v: img.rotate(_random_sign(v)), -30, 30),
    ("Solarize", lambda img, v: ImageOps.solarize(img, v), 0, 256),
    ("Color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    ("Contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    ("Brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    ("Sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    ("ShearX", lambda img, v: _affine(img, (1, _random_sign(v), 0, 0, 1, 0)), -0.1, 0.1),
    ("ShearY", lambda img, v: _affine(img, (1, 0, 0, _random_sign(v), 1, 0)), -0.1, 0.1),
    ("TranslateX", lambda img, v: _affine(img, (1, 0, _random_sign(v) * img.size[0], 0, 1, 0)), -0.1, 0.1),
    ("TranslateY", lambda img, v: _affine(img, (1, 0, 0, 0, 1, _random_sign(v) * img.size[1])), -0.1, 0.1),
    ("Posterize", lambda img, v: ImageOps.posterize(img, int(v)), 4, 8),
]


class StrongAugment:
    """Apply ``n`` ops drawn with replacement from ``OPS``, each at a magnitude uniform over its whole range (no
    global magnitude as in RandAugment: what makes this view "strong")."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, img: Image.Image) -> Image.Image:
        for _ in range(self.n):
            _, op, low, high = random.choice(OPS)
            img = op(img, low + random.random() * (high - low))
        return img


class Cutout:
    """Zero ``n_holes`` squares, centred anywhere and clipped at the borders, of a normalised C×H×W tensor (so the
    holes hold the dataset mean rather than black)."""

    def __init__(self, n_holes: int, length: int, random: bool = True) -> None:
        self.n_holes, self.length, self.random = n_holes, length, random

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1], img.shape[2]
        img = img.clone()
        for _ in range(self.n_holes):
            side = random.randint(1, self.length) if self.random else self.length
            y, x, half = random.randrange(h), random.randrange(w), side // 2
            img[:, max(y - half, 0) : min(y + half, h), max(x - half, 0) : min(x + half, w)] = 0
        return img


def _flip(kwargs: dict) -> list[Callable]:
    """Horizontal flip unless the config turns it off (digits are not mirror symmetric)."""
    return [transforms.RandomHorizontalFlip()] if kwargs.get("horizontal_flip", True) else []


def _simclr(kwargs: dict) -> Callable:
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(**kwargs["random_resized_crop"]),
            *_flip(kwargs),
            transforms.RandomApply(
                [transforms.ColorJitter(**kwargs["color_jitter"])], **kwargs["color_jitter_random_apply"]
            ),
            transforms.RandomGrayscale(**kwargs["random_grayscale"]),
            transforms.ToTensor(),
            transforms.Normalize(**kwargs["normalize"]),
        ]
    )


def _ours(kwargs: dict) -> Callable:
    return transforms.Compose(
        [
            *_flip(kwargs),
            transforms.RandomCrop(kwargs["crop_size"]),
            StrongAugment(kwargs["num_strong_augs"]),
            transforms.ToTensor(),
            transforms.Normalize(**kwargs["normalize"]),
            Cutout(**kwargs["cutout_kwargs"]),
        ]
    )


def by_strategy(cfg: dict, builders: dict[str, Callable[[dict], Callable]]) -> Callable:
    """The transform ``builders`` makes for ``cfg['augmentation_strategy']``: both augmentation backends (this
    module and data/batch_augment.py) choose through here, so they know the same strategies and fail alike."""
    return builders[cfg["augmentation_strategy"]](cfg["augmentation_kwargs"])


def get_train_transformations(cfg: dict) -> Callable:
    """Build the training transform named by ``cfg['augmentation_strategy']``."""
    return by_strategy(cfg, {"simclr": _simclr, "ours": _ours})


def get_val_transformations(cfg: dict) -> Callable:
    """Deterministic transform for evaluation, feature mining and the weak self-label view; a torchvision:/timm:
    backbone without `transformation_kwargs` gets its library's own preprocessing, what it was trained on."""
    kwargs = cfg["transformation_kwargs"]
    if not kwargs and is_library_backbone(cfg.get("backbone", "")):
        return library_transform(cfg["backbone"])
    return transforms.Compose(
        [transforms.CenterCrop(kwargs["crop_size"]), transforms.ToTensor(), transforms.Normalize(**kwargs["normalize"])]
    )
