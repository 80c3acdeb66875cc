"""The batched backend (data/batch_augment.py) against the PIL path (data/augment.py, torchvision on PIL images).

Op by op at fixed parameters the batched ops must give PIL's pixels; whole transforms must give the same
distribution of outputs. The statistical checks run a few thousand seeded draws per backend, so they are
deterministic; each tolerance is a bound that the difference of two independent estimates of the same quantity
exceeds with probability below about 1e-3 (the reasoning is given at each check).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms

from data import augment
from data import batch_augment as ba

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IDENTITY_NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # outputs stay in level / 255 units
CIFAR_NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
DRAWS = 2000


def _images() -> list[np.ndarray]:
    """Noise of three sizes (one odd), a colour gradient and a low-contrast image: H×W×3 uint8."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (16, 31, 32)]
    ramp = np.linspace(0, 255, 32)
    gradient = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((32, 32), 77.0)], axis=-1).astype(np.uint8)
    flat = np.clip(rng.normal(120, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
    return [*noise, gradient, flat]


IMAGES = _images()


def _levels(image: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """H×W×3 uint8 → [1, 3, H, W] float levels, the batched ops' working format."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)


def _pixels(batch: torch.Tensor) -> np.ndarray:
    return batch[0].permute(1, 2, 0).cpu().numpy()


def _one(value: float, device: str = "cpu") -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64, device=device)


def _simclr_kwargs(**overrides) -> dict:
    kwargs = {
        "random_resized_crop": {"size": 32, "scale": [0.2, 1.0]},
        "color_jitter_random_apply": {"p": 0.8},
        "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
        "random_grayscale": {"p": 0.2},
        "normalize": IDENTITY_NORM,
    }
    kwargs.update(overrides)
    return kwargs


def _cfg(strategy: str, kwargs: dict, crop_size: int = 32) -> dict:
    return {
        "augmentation_strategy": strategy,
        "augmentation_kwargs": kwargs,
        "transformation_kwargs": {"crop_size": crop_size, "normalize": CIFAR_NORM},
    }


def _ours_kwargs(**overrides) -> dict:
    kwargs = {
        "crop_size": 32,
        "normalize": IDENTITY_NORM,
        "num_strong_augs": 4,
        "cutout_kwargs": {"n_holes": 1, "length": 16, "random": True},
    }
    kwargs.update(overrides)
    return kwargs


# ---------------------------------------------------------------- single ops at fixed parameters: PIL's pixels


# ImageEnhance's four ops as the batched transforms compute them: a blend toward each op's degenerate image.
def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return ba.blend(torch.zeros_like(x), x, factor)


def adjust_color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return ba.blend(ba.grayscale(x), x, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return ba.blend(ba.contrast_degenerate(x), x, factor)


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return ba.blend(ba.sharpness_degenerate(x), x, factor)


BLENDS = [
    ("brightness", lambda im, f: ImageEnhance.Brightness(im).enhance(f), adjust_brightness),
    ("color", lambda im, f: ImageEnhance.Color(im).enhance(f), adjust_color),
    ("contrast", lambda im, f: ImageEnhance.Contrast(im).enhance(f), adjust_contrast),
    ("sharpness", lambda im, f: ImageEnhance.Sharpness(im).enhance(f), adjust_sharpness),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, pil_op, batched_op", BLENDS, ids=[name for name, _, _ in BLENDS])
@pytest.mark.parametrize("factor", [0.05, 0.5, 0.95, 1.4])  # 'ours' magnitudes and ColorJitter's 0.6-1.4
def test_enhance_ops_equal_pil(name, pil_op, batched_op, factor, device):
    for image in IMAGES:
        expected = np.asarray(pil_op(Image.fromarray(image), factor))
        got = _pixels(batched_op(_levels(image, device), _one(factor, device).float()))
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} {factor}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hue", [-0.5, -0.1, -0.03, 0.0, 0.05, 0.1])
def test_hue_equals_torchvision_on_pil(hue, device):
    """Hue goes through PIL's 8-bit HSV (checked on all 2^24 colours while writing it; here 65,536 of them)."""
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for image in [*IMAGES, colours]:
        expected = np.asarray(TVF.adjust_hue(Image.fromarray(image), hue))
        got = _pixels(ba.adjust_hue(_levels(image, device), _one(hue, device)))
        np.testing.assert_array_equal(got, expected)


LUT_OPS = [
    ("grayscale", lambda im: im.convert("L").convert("RGB"), lambda x: ba.grayscale(x).expand_as(x)),
    ("equalize", ImageOps.equalize, ba.equalize),
    ("autocontrast", ImageOps.autocontrast, ba.autocontrast),
    *[
        (f"solarize {t}", lambda im, t=t: ImageOps.solarize(im, t), lambda x, t=t: ba.solarize(x, _one(t, x.device)))
        for t in (0, 37.5, 128, 200.2, 255.5)
    ],
    *[
        (
            f"posterize {v}",
            lambda im, v=v: ImageOps.posterize(im, int(v)),
            lambda x, v=v: ba.posterize(x, _one(v, x.device).float()),
        )
        for v in (4.0, 5.5, 6.2, 7.99)
    ],
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, pil_op, batched_op", LUT_OPS, ids=[name for name, _, _ in LUT_OPS])
def test_level_ops_equal_pil(name, pil_op, batched_op, device):
    for image in IMAGES:
        np.testing.assert_array_equal(
            _pixels(batched_op(_levels(image, device))), np.asarray(pil_op(Image.fromarray(image)))
        )


GEOMETRIC = [(name, v) for name in ("Rotate",) for v in (-30.0, -17.3, 3.1, 29.0)] + [
    (name, v) for name in ("ShearX", "ShearY", "TranslateX", "TranslateY") for v in (-0.1, 0.07, 0.093)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, v", GEOMETRIC)
def test_geometric_ops_match_pil(name, v, device, monkeypatch):
    """Nearest-neighbour warps with fill 0, as augment.py's PIL calls at a fixed (signed) magnitude.

    Tolerance: at most 1% of the pixels may differ. A pixel differs only when its sample point falls within about
    1e-4 pixel of a pixel border, where PIL's fixed-point arithmetic and the float grid may pick different
    neighbours (0.02% of the pixels over 180 rotations while writing this; none in the cases here).
    """
    monkeypatch.setattr(augment, "_random_sign", lambda value: value)
    pil_op = next(op for op_name, op, _, _ in augment.OPS if op_name == name)
    for image in IMAGES:
        expected = np.asarray(pil_op(Image.fromarray(image), v))
        x = _levels(image, device)
        matrices = ba.geometric_matrices(
            torch.tensor([ba.OP_INDEX[name]], device=device), _one(v, device), x.shape[-2], x.shape[-1]
        )
        differs = (_pixels(ba.affine_nearest(x, matrices)) != expected).any(axis=-1)
        assert differs.mean() <= 0.01, f"{name} {v}: {differs.mean():.2%} of the pixels differ"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box", [(0, 0, 32, 32), (3, 5, 20, 11), (10, 2, 21, 30), (1, 1, 30, 15), (4, 4, 7, 9)])
@pytest.mark.parametrize("size", [16, 24, 32])
def test_resized_crop_matches_pil_bilinear(box, size, device):
    """A crop box resized with PIL's antialiased bilinear filter. Tolerance: one 8-bit level.

    PIL rounds to 8 bits between its horizontal and vertical passes and recent versions choose the pass order per
    size, so a level may differ by one (never more); a wrong filter, scale or pixel centre differs by many.
    """
    image = IMAGES[2]  # 32×32
    expected = np.asarray(TVF.resized_crop(Image.fromarray(image), *box, [size, size], antialias=True)).astype(float)
    got = _pixels(
        ba.resized_crop(_levels(image, device), torch.tensor([box], dtype=torch.float64, device=device), (size, size))
    )
    assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("y, x, side", [(5, 7, 16), (0, 0, 9), (31, 2, 16), (12, 30, 5), (20, 20, 1)])
def test_cutout_hole_equals_pil_cutout(y, x, side, device, monkeypatch):
    """The zeroed square for a given centre and side, including clipped borders and side 1 (an empty hole)."""

    draws = iter([y, x])
    monkeypatch.setattr(augment.random, "randint", lambda low, high: side)
    monkeypatch.setattr(augment.random, "randrange", lambda stop: next(draws))
    ones = torch.ones(3, 32, 32)
    expected_zero = augment.Cutout(n_holes=1, length=16, random=True)(ones)[0] == 0
    one = torch.ones(1, dtype=torch.int64, device=device)
    hole = ba.cutout_hole(32, 32, one * y, one * x, one * side)[0].cpu()
    assert torch.equal(hole, expected_zero)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height, width", [(32, 32), (36, 40), (30, 28)])
def test_val_transform_equals_pil(height, width, device):
    """CenterCrop (zero padding when the crop is larger) + ToTensor + Normalize: bit-identical to the PIL path."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    cfg = _cfg("simclr", _simclr_kwargs())
    pil = augment.get_val_transformations(cfg)
    expected = torch.stack([pil(Image.fromarray(image)) for image in images])
    got = ba.get_batch_transformations(cfg, train=False)(torch.from_numpy(images).permute(0, 3, 1, 2).to(device))
    assert got.dtype == torch.float32 and torch.equal(got.cpu(), expected)


def test_simclr_with_every_draw_pinned_equals_pil():
    """Full-image crop, no flip, no jitter, always grey, CIFAR normalisation: exactly the PIL transform's output."""
    kwargs = _simclr_kwargs(
        random_resized_crop={"size": 32, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]},
        horizontal_flip=False,
        color_jitter_random_apply={"p": 0.0},
        random_grayscale={"p": 1.0},
        normalize=CIFAR_NORM,
    )
    cfg = _cfg("simclr", kwargs)
    image = IMAGES[2]
    expected = augment.get_train_transformations(cfg)(Image.fromarray(image))
    got = ba.get_batch_transformations(cfg)(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert torch.equal(got[0], expected)


@pytest.mark.parametrize("strategy", ["simclr", "ours"])
def test_mixed_size_canvas_draws_inside_each_image(strategy):
    """A zero-padded canvas with per-image sizes gives what the unpadded images give under the same draws."""
    image = torch.from_numpy(IMAGES[1]).permute(2, 0, 1)  # 31×31
    canvas = torch.zeros(4, 3, 40, 36, dtype=torch.uint8)
    canvas[:, :, :31, :31] = image
    kwargs = _simclr_kwargs() if strategy == "simclr" else _ours_kwargs(crop_size=24)
    transform = ba.get_batch_transformations(_cfg(strategy, kwargs))
    torch.manual_seed(3)
    expected = transform(image[None].expand(4, -1, -1, -1))
    torch.manual_seed(3)
    got = transform(canvas, sizes=torch.tensor([[31, 31]] * 4))
    assert torch.equal(got, expected)


def test_random_crop_larger_than_image_is_a_clear_error():
    transform = ba.get_batch_transformations(_cfg("ours", _ours_kwargs(crop_size=40)))
    with pytest.raises(ValueError, match="crop size"):
        transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_unsupported_crop_option_is_a_clear_error():
    """RandomResizedCrop's other options (interpolation, antialias) are refused by the config, for both backends."""
    from tests.conftest import ROOT
    from utils.config import ConfigError, load_config

    override = "augmentation_kwargs.random_resized_crop.interpolation=3"
    with pytest.raises(
        ConfigError, match="Unknown config key 'interpolation' in augmentation_kwargs.random_resized_crop"
    ):
        load_config(None, ROOT / "configs/pretext/simclr_cifar10.yml", [override])


# ---------------------------------------------------------------- whole transforms: the same distribution


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical distributions of a and b."""
    grid = np.sort(np.concatenate([a, b]))
    return float(
        np.abs(
            np.searchsorted(np.sort(a), grid, "right") / len(a) - np.searchsorted(np.sort(b), grid, "right") / len(b)
        ).max()
    )


def _ks_bound(n: int, m: int) -> float:
    """KS distance exceeded with probability 0.001 when both samples come from one distribution: 1.949·√((n+m)/nm)."""
    return math.sqrt(-math.log(0.001 / 2) / 2) * math.sqrt((n + m) / (n * m))


def _same_rate(hits_a: int, hits_b: int, n: int) -> bool:
    """Two-proportion check at 4 standard errors of the difference (false alarm 6e-5)."""
    pooled = (hits_a + hits_b) / (2 * n)
    return abs(hits_a - hits_b) / n <= 4 * math.sqrt(2 * pooled * (1 - pooled) / n) + 1e-12


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40), (96, 96)])
def test_random_resized_crop_area_and_aspect_histograms(height, width):
    """Area fraction and log aspect ratio of the crop boxes: the batched sampler vs torchvision's get_params."""
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    reference = np.array(
        [transforms.RandomResizedCrop.get_params(torch.empty(1, height, width), scale, ratio) for _ in range(DRAWS)],
        dtype=float,
    )
    torch.manual_seed(1)
    full = torch.ones(DRAWS, dtype=torch.float64)
    boxes = ba.random_resized_crop_boxes(full * height, full * width, scale, ratio).numpy()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    for column in (0, 1):  # the offsets too: uniform over the positions that fit
        reference_position = reference[:, column] / np.maximum((height, width)[column] - reference[:, column + 2], 1)
        position = boxes[:, column] / np.maximum((height, width)[column] - boxes[:, column + 2], 1)
        assert _ks_statistic(position, reference_position) <= _ks_bound(DRAWS, DRAWS)
    area = lambda b: b[:, 2] * b[:, 3] / (height * width)  # noqa: E731
    log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])  # noqa: E731
    assert _ks_statistic(area(boxes), area(reference)) <= _ks_bound(DRAWS, DRAWS)
    assert _ks_statistic(log_aspect(boxes), log_aspect(reference)) <= _ks_bound(DRAWS, DRAWS)


def _square(size: int, seed: int = 5) -> np.ndarray:
    """A colourful test image: a smooth colour ramp plus noise (size × size × 3 uint8)."""
    ramp = np.linspace(0, 255, size)
    smooth = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((size, size), 90.0)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 25, (size, size, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _batch(image: np.ndarray) -> torch.Tensor:
    """DRAWS copies of one image as a uint8 [N, 3, H, W] batch."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].expand(DRAWS, -1, -1, -1).contiguous()


def _run_both(cfg: dict, image: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """DRAWS outputs of the PIL transform and of the batched one on the same image, as [N, 3, H, W] arrays."""
    pil = augment.get_train_transformations(cfg)
    torch.manual_seed(seed)
    random.seed(seed)
    pil_out = torch.stack([pil(Image.fromarray(image)) for _ in range(DRAWS)]).numpy()
    torch.manual_seed(seed + 1)
    return pil_out, ba.get_batch_transformations(cfg)(_batch(image)).numpy()


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    """Within 4 standard errors of the nominal rate (false alarm 6e-5)."""
    return abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def _pinned_crop_kwargs(**overrides) -> dict:
    """The full image as the crop (scale and ratio 1), so that the other draws can be read off the output."""
    return _simclr_kwargs(random_resized_crop={"size": 16, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}, **overrides)


def test_flip_rate_is_torchvisions():
    """RandomHorizontalFlip flips with probability 0.5 (torchvision: torch.rand(1) < 0.5)."""
    kwargs = _pinned_crop_kwargs(color_jitter_random_apply={"p": 0.0}, random_grayscale={"p": 0.0})
    image = _square(16)
    out = ba.get_batch_transformations(_cfg("simclr", kwargs))(_batch(image)).numpy()
    flipped = np.isclose(out, image[:, ::-1].transpose(2, 0, 1) / 255.0).all(axis=(1, 2, 3))
    kept = np.isclose(out, image.transpose(2, 0, 1) / 255.0).all(axis=(1, 2, 3))
    assert (flipped | kept).all()
    assert _binomial_ok(int(flipped.sum()), DRAWS, 0.5)


def test_jitter_applied_rate_is_torchvisions():
    """RandomApply(ColorJitter, p=0.8); brightness drawn in [0.1, 0.5] so that an applied jitter always shows."""
    kwargs = _pinned_crop_kwargs(
        horizontal_flip=False,
        color_jitter={"brightness": [0.1, 0.5], "contrast": 0, "saturation": 0, "hue": 0},
        random_grayscale={"p": 0.0},
    )
    image = _square(16)
    out = ba.get_batch_transformations(_cfg("simclr", kwargs))(_batch(image)).numpy()
    applied = ~np.isclose(out, image.transpose(2, 0, 1) / 255.0).all(axis=(1, 2, 3))
    assert _binomial_ok(int(applied.sum()), DRAWS, 0.8)


def _assert_same_pixel_distribution(pil_out: np.ndarray, batched_out: np.ndarray) -> None:
    """Per-pixel mean and standard deviation agree within 5 standard errors of their difference.

    Standard errors come from the samples: var(mean) = s²/N and var(s) ≈ (m4 − s⁴)/(4 N s²) (delta method). With
    3·16·16 pixels and two statistics, |z| > 5 somewhere has probability ≈ 1536 · 5.7e-7 ≈ 0.1% if the
    distributions are equal; the draws are seeded, so the test is deterministic.
    """
    n = len(pil_out)
    stats = []
    for out in (pil_out, batched_out):
        mean, var = out.mean(axis=0), out.var(axis=0)
        m4 = ((out - mean) ** 4).mean(axis=0)
        stats.append((mean, np.sqrt(var), var / n, np.maximum(m4 - var**2, 0) / (4 * n * np.maximum(var, 1e-12))))
    (mean_p, std_p, var_mean_p, var_std_p), (mean_b, std_b, var_mean_b, var_std_b) = stats
    z_mean = np.abs(mean_b - mean_p) / np.sqrt(var_mean_p + var_mean_b + 1e-12)
    z_std = np.abs(std_b - std_p) / np.sqrt(var_std_p + var_std_b + 1e-12)
    assert z_mean.max() <= 5, f"per-pixel means differ: max z {z_mean.max():.2f}"
    assert z_std.max() <= 5, f"per-pixel stds differ: max z {z_std.max():.2f}"


def test_simclr_outputs_and_grayscale_rate_match_pil():
    """CIFAR's simclr settings on a 16×16 image: per-pixel statistics and the rate of grey outputs."""
    kwargs = _simclr_kwargs(random_resized_crop={"size": 16, "scale": [0.2, 1.0]})
    pil_out, batched_out = _run_both(_cfg("simclr", kwargs), _square(16))
    _assert_same_pixel_distribution(pil_out, batched_out)
    grey = [int((np.ptp(out, axis=1) == 0).all(axis=(1, 2)).sum()) for out in (pil_out, batched_out)]
    assert _same_rate(*grey, DRAWS), grey
    distinct = len({out.tobytes() for out in batched_out[:200]})
    assert distinct == 200, "every image of a batch must get its own random draw"


def test_ours_outputs_and_op_frequencies_match_pil(monkeypatch):
    """Strong augmentation of a 20×20 image cropped to 16: per-pixel statistics, op choices and magnitudes."""
    pil_draws: list[tuple[int, float]] = []

    def recording(index, op):
        def wrapped(img, v):
            pil_draws.append((index, v))
            return op(img, v)

        return wrapped

    monkeypatch.setattr(
        augment, "OPS", [(name, recording(i, op), low, high) for i, (name, op, low, high) in enumerate(augment.OPS)]
    )
    batched_draws: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_step = ba.StrongBatchTransform.strong_step

    def recording_step(self, x, op, v):
        batched_draws.append((op, v))
        return original_step(self, x, op, v)

    monkeypatch.setattr(ba.StrongBatchTransform, "strong_step", recording_step)
    kwargs = _ours_kwargs(crop_size=16, cutout_kwargs={"n_holes": 1, "length": 8, "random": True})
    pil_out, batched_out = _run_both(_cfg("ours", kwargs), _square(20))
    _assert_same_pixel_distribution(pil_out, batched_out)

    pil_ops = np.array([index for index, _ in pil_draws])
    batched_ops = torch.cat([op for op, _ in batched_draws]).numpy()
    assert len(pil_ops) == len(batched_ops) == 4 * DRAWS
    # Op choice: a chi-square test of the two count vectors (13 degrees of freedom; 34.5 is its 0.999 quantile).
    counts = np.stack([np.bincount(ops, minlength=14) for ops in (pil_ops, batched_ops)])
    expected = counts.sum(axis=0, keepdims=True) / 2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 <= 34.5, f"op frequencies differ: chi2 {chi2:.1f}, counts {counts.tolist()}"
    # Magnitudes, as fractions of each op's range (the random sign of the geometric ops keeps them uniform).
    low = np.array([low for _, _, low, _ in augment.OPS])
    high = np.array([high for _, _, _, high in augment.OPS])
    pil_fraction = (np.array([v for _, v in pil_draws]) - low[pil_ops]) / (high - low)[pil_ops]
    batched_v = torch.cat([v for _, v in batched_draws]).numpy()
    batched_fraction = (batched_v - low[batched_ops]) / (high - low)[batched_ops]
    assert (batched_fraction >= 0).all() and (batched_fraction < 1).all()
    assert _ks_statistic(pil_fraction, batched_fraction) <= _ks_bound(len(pil_fraction), len(batched_fraction))


def test_the_jitter_step_applies_brightness_contrast_and_saturation_as_numbered():
    from data import batch_augment as ba

    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 6, 6)).float()
    factors = torch.tensor([[0.5, 1.5, 0.2, 0.0]]).expand(3, 4)  # brightness, contrast, saturation, hue
    op, active = torch.tensor([0, 1, 2]), torch.tensor([True, True, True])
    out = ba.SimCLRBatchTransform.blend_step(x, op, active, factors)
    assert torch.equal(out[0], adjust_brightness(x[:1], torch.tensor([0.5]))[0])
    assert torch.equal(out[1], adjust_contrast(x[1:2], torch.tensor([1.5]))[0])
    assert torch.equal(out[2], adjust_color(x[2:3], torch.tensor([0.2]))[0])
    idle = ba.SimCLRBatchTransform.blend_step(x, op, torch.tensor([False, False, False]), factors)
    assert torch.equal(idle, x)  # an inactive image is left exactly as it was
