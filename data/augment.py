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


def identity(img: Image.Image, v: float) -> Image.Image:
    return img


def auto_contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.equalize(img)


def rotate(img: Image.Image, v: float) -> Image.Image:
    return img.rotate(_random_sign(v))


def solarize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.solarize(img, v)


def color(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(v)


def contrast(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(v)


def brightness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(v)


def sharpness(img: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(v)


def shear_x(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, _random_sign(v), 0, 0, 1, 0))


def shear_y(img: Image.Image, v: float) -> Image.Image:
    return _affine(img, (1, 0, 0, _random_sign(v), 1, 0))


def translate_x(img: Image.Image, v: float) -> Image.Image:
    """``v`` is a fraction of the width, so the op is resolution independent."""
    return _affine(img, (1, 0, _random_sign(v) * img.size[0], 0, 1, 0))


def translate_y(img: Image.Image, v: float) -> Image.Image:
    """``v`` is a fraction of the height, so the op is resolution independent."""
    return _affine(img, (1, 0, 0, 0, 1, _random_sign(v) * img.size[1]))


def posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, int(v))


# (name, op, min magnitude, max magnitude); ops that ignore the magnitude keep (0, 1).
OPS: list[tuple[str, Callable[[Image.Image, float], Image.Image], float, float]] = [
    ("Identity", identity, 0, 1),
    ("AutoContrast", auto_contrast, 0, 1),
    ("Equalize", equalize, 0, 1),
    ("Rotate", rotate, -30, 30),
    ("Solarize", solarize, 0, 256),
    ("Color", color, 0.05, 0.95),
    ("Contrast", contrast, 0.05, 0.95),
    ("Brightness", brightness, 0.05, 0.95),
    ("Sharpness", sharpness, 0.05, 0.95),
    ("ShearX", shear_x, -0.1, 0.1),
    ("ShearY", shear_y, -0.1, 0.1),
    ("TranslateX", translate_x, -0.1, 0.1),
    ("TranslateY", translate_y, -0.1, 0.1),
    ("Posterize", posterize, 4, 8),
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
        self.n_holes = n_holes
        self.length = length
        self.random = random

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1], img.shape[2]
        img = img.clone()
        for _ in range(self.n_holes):
            side = random.randint(1, self.length) if self.random else self.length
            y = random.randrange(h)
            x = random.randrange(w)
            half = side // 2
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
