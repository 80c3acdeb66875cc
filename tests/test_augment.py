"""data/augment.py (the PIL transforms, Cutout) against expectations computed independently of it."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from data import augment
from data import batch_augment as ba

CIFAR_NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}


def _image(h: int = 8, w: int = 8, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).copy()


def _simclr_cfg(**overrides) -> dict:
    kwargs = {
        "random_resized_crop": {"size": 32, "scale": [0.2, 1.0]},
        "color_jitter_random_apply": {"p": 0.8},
        "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
        "random_grayscale": {"p": 0.2},
        "normalize": CIFAR_NORM,
    }
    kwargs.update(overrides)
    return {"augmentation_strategy": "simclr", "augmentation_kwargs": kwargs}


def _ours_cfg(**overrides) -> dict:
    kwargs = {
        "crop_size": 32,
        "normalize": CIFAR_NORM,
        "num_strong_augs": 4,
        "cutout_kwargs": {"n_holes": 1, "length": 16, "random": True},
    }
    kwargs.update(overrides)
    return {"augmentation_strategy": "ours", "augmentation_kwargs": kwargs}


def _op(name: str):
    return next(fn for n, fn, _, _ in augment.OPS if n == name)


# ---------------------------------------------------------------- op table


def test_op_table_matches_reference_ranges():
    ranges = {name: (lo, hi) for name, _, lo, hi in augment.OPS}
    assert len(augment.OPS) == 14
    assert ranges == {
        "Identity": (0, 1),
        "AutoContrast": (0, 1),
        "Equalize": (0, 1),
        "Rotate": (-30, 30),
        "Solarize": (0, 256),
        "Color": (0.05, 0.95),
        "Contrast": (0.05, 0.95),
        "Brightness": (0.05, 0.95),
        "Sharpness": (0.05, 0.95),
        "ShearX": (-0.1, 0.1),
        "ShearY": (-0.1, 0.1),
        "TranslateX": (-0.1, 0.1),
        "TranslateY": (-0.1, 0.1),
        "Posterize": (4, 8),
    }


@pytest.mark.parametrize(
    "name, v, expected",
    [
        ("Identity", 0.3, lambda im: im),
        ("AutoContrast", 0.3, ImageOps.autocontrast),
        ("Equalize", 0.3, ImageOps.equalize),
        ("Solarize", 100.5, lambda im: ImageOps.solarize(im, 100.5)),
        ("Color", 0.3, lambda im: ImageEnhance.Color(im).enhance(0.3)),
        ("Contrast", 0.3, lambda im: ImageEnhance.Contrast(im).enhance(0.3)),
        ("Brightness", 0.3, lambda im: ImageEnhance.Brightness(im).enhance(0.3)),
        ("Sharpness", 0.3, lambda im: ImageEnhance.Sharpness(im).enhance(0.3)),
        ("Posterize", 5.7, lambda im: ImageOps.posterize(im, 5)),
    ],
)
def test_photometric_ops_equal_their_pil_call(name, v, expected):
    img = _image()
    np.testing.assert_array_equal(_pixels(_op(name)(img, v)), _pixels(expected(img)))


def _affine(coeffs):
    return lambda im: im.transform(im.size, Image.Transform.AFFINE, coeffs)


@pytest.mark.parametrize(
    "name, v, expected",
    [
        ("Rotate", 17.0, lambda im, s: im.rotate(s * 17.0)),
        ("ShearX", 0.08, lambda im, s: _affine((1, s * 0.08, 0, 0, 1, 0))(im)),
        ("ShearY", 0.08, lambda im, s: _affine((1, 0, 0, s * 0.08, 1, 0))(im)),
        ("TranslateX", 0.25, lambda im, s: _affine((1, 0, s * 0.25 * 8, 0, 1, 0))(im)),
        ("TranslateY", 0.25, lambda im, s: _affine((1, 0, 0, 0, 1, s * 0.25 * 8))(im)),
    ],
)
def test_geometric_ops_flip_sign_with_half_probability(monkeypatch, name, v, expected):
    img = _image()
    outputs = set()
    for r in (0.1, 0.9):  # one draw on each side of 0.5
        monkeypatch.setattr(random, "random", lambda r=r: r)
        outputs.add(_pixels(_op(name)(img, v)).tobytes())
    assert outputs == {_pixels(expected(img, 1)).tobytes(), _pixels(expected(img, -1)).tobytes()}


def test_translate_x_shifts_by_fraction_of_width(monkeypatch):
    img = _image()
    src = _pixels(img)
    left, right = np.zeros_like(src), np.zeros_like(src)
    left[:, :6], right[:, 2:] = src[:, 2:], src[:, :6]  # 0.25 * 8 px = 2 px either way
    outputs = set()
    for r in (0.1, 0.9):
        monkeypatch.setattr(random, "random", lambda r=r: r)
        outputs.add(_pixels(_op("TranslateX")(img, 0.25)).tobytes())
    assert outputs == {left.tobytes(), right.tobytes()}


def test_rotate_by_90_is_a_quarter_turn(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.9)
    img = _image()
    out = _pixels(_op("Rotate")(img, 90.0))
    assert any(
        (out == _pixels(img.transpose(t))).all() for t in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
    )


# ---------------------------------------------------------------- StrongAugment


def _recording_ops(calls: list) -> list:
    def recorder(name):
        return lambda img, v: calls.append((name, v)) or img

    return [(name, recorder(name), lo, hi) for name, _, lo, hi in augment.OPS]


@pytest.mark.parametrize("n", [0, 1, 4, 7])
def test_strong_augment_applies_exactly_n_ops(monkeypatch, n):
    calls = []
    monkeypatch.setattr(augment, "OPS", _recording_ops(calls))
    random.seed(0)
    augment.StrongAugment(n)(_image())
    assert len(calls) == n


def test_strong_augment_magnitudes_lie_in_range_and_ops_repeat(monkeypatch):
    calls = []
    monkeypatch.setattr(augment, "OPS", _recording_ops(calls))
    ranges = {name: (lo, hi) for name, _, lo, hi in augment.OPS}
    random.seed(1)
    strong = augment.StrongAugment(4)
    for _ in range(300):
        strong(_image())
    assert {name for name, _ in calls} == set(ranges)
    for name, v in calls:
        lo, hi = ranges[name]
        assert lo <= v <= hi
    rotations = [v for name, v in calls if name == "Rotate"]
    assert min(rotations) < -20 and max(rotations) > 20  # spread over the whole range
    # With replacement: some call of 4 ops must have drawn the same op twice.
    draws = [tuple(name for name, _ in calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert any(len(set(d)) < 4 for d in draws)


def test_strong_augment_on_real_ops_keeps_size_and_mode():
    random.seed(2)
    img = _image(32, 32)
    for _ in range(50):
        out = augment.StrongAugment(4)(img)
        assert out.size == img.size and out.mode == "RGB"


# ---------------------------------------------------------------- Cutout


def _fix_cutout_draws(monkeypatch, side: int, y: int, x: int) -> None:
    monkeypatch.setattr(random, "randint", lambda a, b: side)
    centre = iter([y, x])
    monkeypatch.setattr(random, "randrange", lambda n: next(centre))


@pytest.mark.parametrize(
    "side, y, x, rows, cols",
    [
        (6, 10, 12, (7, 13), (9, 15)),  # inside: [y-3, y+3) x [x-3, x+3)
        (8, 0, 31, (0, 4), (27, 32)),  # clipped at top and right
        (5, 31, 1, (29, 32), (0, 3)),  # odd side: half = 2, clipped bottom and left
    ],
)
def test_cutout_zeroes_expected_square(monkeypatch, side, y, x, rows, cols):
    _fix_cutout_draws(monkeypatch, side, y, x)
    img = torch.rand(3, 32, 32) + 1.0
    out = augment.Cutout(n_holes=1, length=16, random=True)(img)
    expected = img.clone()
    expected[:, rows[0] : rows[1], cols[0] : cols[1]] = 0
    assert torch.equal(out, expected)
    assert (img >= 1).all()  # the input tensor is left untouched


def test_cutout_fixed_length_ignores_randint(monkeypatch):
    _fix_cutout_draws(monkeypatch, side=3, y=16, x=16)
    img = torch.ones(3, 32, 32)
    out = augment.Cutout(n_holes=1, length=10, random=False)(img)
    assert (out[:, 11:21, 11:21] == 0).all()
    assert int((out == 0).sum()) == 3 * 10 * 10


def test_cutout_random_side_within_bounds():
    random.seed(3)
    cutout = augment.Cutout(n_holes=1, length=16, random=True)
    sizes = set()
    for _ in range(400):
        zeros = int((cutout(torch.ones(1, 64, 64)) == 0).sum())
        sizes.add(zeros)
        assert zeros <= 16 * 16
    assert len(sizes) > 5


# ---------------------------------------------------------------- pipelines


def test_val_transform_matches_hand_computation():
    img = _image(36, 40, seed=4)
    cfg = {"transformation_kwargs": {"crop_size": 32, "normalize": CIFAR_NORM}}
    out = augment.get_val_transformations(cfg)(img)
    crop = np.asarray(img)[2:34, 4:36].astype(np.float32) / 255.0  # centre 32x32 of 36x40
    mean, std = np.array(CIFAR_NORM["mean"]), np.array(CIFAR_NORM["std"])
    expected = ((crop - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("cfg", [_simclr_cfg(), _ours_cfg()])
def test_train_output_shape(cfg):
    random.seed(5)
    torch.manual_seed(5)
    out = augment.get_train_transformations(cfg)(_image(40, 40))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def _run_seeded(transform, img, seed: int) -> torch.Tensor:
    random.seed(seed)
    torch.manual_seed(seed)
    return transform(img)


@pytest.mark.parametrize("cfg", [_simclr_cfg(), _ours_cfg()])
def test_train_transform_is_reproducible_from_random_and_torch_seeds(cfg):
    transform = augment.get_train_transformations(cfg)
    img = _image(40, 40, seed=6)
    np.random.seed(0)
    first = _run_seeded(transform, img, 11)
    np.random.seed(1)  # numpy's global state must not matter
    assert torch.equal(first, _run_seeded(transform, img, 11))
    assert not torch.equal(first, _run_seeded(transform, img, 12))


def _gradient_image() -> Image.Image:
    """Grey left-to-right ramp: any crop keeps it increasing, a mirror makes it decreasing."""
    ramp = np.tile((np.arange(32) * 8).astype(np.uint8), (32, 1))
    return Image.fromarray(np.stack([ramp] * 3, axis=-1))


def _is_mirrored(out: torch.Tensor) -> bool:
    return bool(out[0, :, 0].mean() > out[0, :, -1].mean())


@pytest.mark.parametrize(
    "make_cfg",
    [
        lambda **flip: _simclr_cfg(color_jitter_random_apply={"p": 0.0}, random_grayscale={"p": 0.0}, **flip),
        lambda **flip: _ours_cfg(num_strong_augs=0, cutout_kwargs={"n_holes": 0, "length": 16}, **flip),
    ],
)
def test_horizontal_flip_can_be_disabled(make_cfg):
    img = _gradient_image()
    unflipped = augment.get_train_transformations(make_cfg(horizontal_flip=False))
    default = augment.get_train_transformations(make_cfg())
    assert not any(_is_mirrored(_run_seeded(unflipped, img, s)) for s in range(30))
    assert any(_is_mirrored(_run_seeded(default, img, s)) for s in range(30))


def test_unknown_strategy_lists_valid_ones():
    from tests.conftest import ROOT
    from utils.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'autoaugment', but it must be one of simclr, ours"):
        load_config(None, ROOT / "configs/scan/scan_cifar10.yml", ["augmentation_strategy=autoaugment"])


# ---------------------------------------------------------------- the pipelines of every shipped config

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR20 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS = ((0.3098,) * 3, (0.3476,) * 3)
JITTER = ("ColorJitter", (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))


def _describe(transform) -> list[tuple]:
    """Every step of a Compose as (name, parameters...), so order and values are compared together."""
    steps = []
    for t in transform.transforms:
        name = type(t).__name__
        if name == "RandomResizedCrop":
            steps.append(
                (name, tuple(t.size), tuple(t.scale), tuple(round(r, 4) for r in t.ratio), t.interpolation.value)
            )
        elif name == "RandomHorizontalFlip":
            steps.append((name, t.p))
        elif name == "RandomApply":
            (jitter,) = t.transforms
            steps.append(
                (name, t.p, (type(jitter).__name__, jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue))
            )
        elif name == "RandomGrayscale":
            steps.append((name, t.p))
        elif name in ("RandomCrop", "CenterCrop"):
            steps.append((name, tuple(t.size)))
        elif name == "StrongAugment":
            steps.append((name, t.n))
        elif name == "Normalize":
            steps.append((name, tuple(round(v, 4) for v in t.mean), tuple(round(v, 4) for v in t.std)))
        elif name == "Cutout":
            steps.append((name, t.n_holes, t.length, t.random))
        else:
            steps.append((name,))
    return steps


def _simclr_steps(size: int, norm: tuple, flip: bool = True, scale=(0.2, 1.0), jitter=JITTER) -> list[tuple]:
    """REFERENCE §4: RandomResizedCrop → flip → ColorJitter with p 0.8 → grayscale p 0.2 → ToTensor → Normalize."""
    return [
        ("RandomResizedCrop", (size, size), scale, (0.75, 1.3333), "bilinear"),
        *([("RandomHorizontalFlip", 0.5)] if flip else []),
        ("RandomApply", 0.8, jitter),
        ("RandomGrayscale", 0.2),
        ("ToTensor",),
        ("Normalize", *norm),
    ]


def _ours_steps(size: int, norm: tuple, cutout: int, flip: bool = True) -> list[tuple]:
    """REFERENCE §4: flip → RandomCrop → 4 strong ops → ToTensor → Normalize → Cutout (after Normalize)."""
    return [
        *([("RandomHorizontalFlip", 0.5)] if flip else []),
        ("RandomCrop", (size, size)),
        ("StrongAugment", 4),
        ("ToTensor",),
        ("Normalize", *norm),
        ("Cutout", 1, cutout, True),
    ]


def _val_steps(size: int, norm: tuple) -> list[tuple]:
    return [("CenterCrop", (size, size)), ("ToTensor",), ("Normalize", *norm)]


EXPECTED_PIPELINES = {
    "pretext/simclr_cifar10.yml": (_simclr_steps(32, CIFAR10), _val_steps(32, CIFAR10)),
    "pretext/simclr_cifar20.yml": (_simclr_steps(32, CIFAR20), _val_steps(32, CIFAR20)),
    "pretext/simclr_stl10.yml": (_simclr_steps(96, IMAGENET), _val_steps(96, IMAGENET)),
    "scan/scan_cifar10.yml": (_ours_steps(32, CIFAR10, 16), _val_steps(32, CIFAR10)),
    "scan/scan_cifar20.yml": (_ours_steps(32, CIFAR20, 16), _val_steps(32, CIFAR20)),
    "scan/scan_stl10.yml": (_ours_steps(96, IMAGENET, 32), _val_steps(96, IMAGENET)),
    "scan/scan_imagenet_50.yml": (_simclr_steps(224, IMAGENET), _val_steps(224, IMAGENET)),
    "scan/scan_imagenet_100.yml": (_simclr_steps(224, IMAGENET), _val_steps(224, IMAGENET)),
    "scan/scan_imagenet_200.yml": (_simclr_steps(224, IMAGENET), _val_steps(224, IMAGENET)),
    "selflabel/selflabel_cifar10.yml": (_ours_steps(32, CIFAR10, 16), _val_steps(32, CIFAR10)),
    "selflabel/selflabel_cifar20.yml": (_ours_steps(32, CIFAR20, 16), _val_steps(32, CIFAR20)),
    "selflabel/selflabel_stl10.yml": (_ours_steps(96, IMAGENET, 32), _val_steps(96, IMAGENET)),
    "selflabel/selflabel_imagenet_50.yml": (_ours_steps(224, IMAGENET, 75), _val_steps(224, IMAGENET)),
    "selflabel/selflabel_imagenet_100.yml": (_ours_steps(224, IMAGENET, 75), _val_steps(224, IMAGENET)),
    "selflabel/selflabel_imagenet_200.yml": (_ours_steps(224, IMAGENET, 75), _val_steps(224, IMAGENET)),
    "scan/scan_digits.yml": (_ours_steps(16, DIGITS, 8, flip=False), _val_steps(16, DIGITS)),
    "selflabel/selflabel_digits.yml": (_ours_steps(16, DIGITS, 8, flip=False), _val_steps(16, DIGITS)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PIPELINES))
def test_shipped_config_builds_the_reference_pipelines(name):
    from tests.conftest import ROOT
    from utils.config import load_config

    cfg = load_config(None, ROOT / "configs" / name)
    train, val = EXPECTED_PIPELINES[name]
    assert _describe(augment.get_train_transformations(cfg)) == train
    assert _describe(augment.get_val_transformations(cfg)) == val


def test_digits_pretext_pipeline_is_simclr_without_flips_or_colour():
    from tests.conftest import ROOT
    from utils.config import load_config

    cfg = load_config(None, ROOT / "configs/pretext/simclr_digits.yml")
    steps = _describe(augment.get_train_transformations(cfg))
    assert [step[0] for step in steps] == [
        "RandomResizedCrop",
        "RandomApply",
        "RandomGrayscale",
        "ToTensor",
        "Normalize",
    ]
    assert steps[0][1] == (16, 16) and steps[-1] == ("Normalize", *DIGITS)


def test_geometric_sign_is_negative_half_of_the_time():
    """Over 4,000 seeded draws the sign flips with probability 0.5 (3-sigma band: ±0.024)."""
    random.seed(0)
    negatives = sum(augment._random_sign(1.0) < 0 for _ in range(4000))
    assert abs(negatives / 4000 - 0.5) < 0.024


def test_cutout_draws_its_side_at_random_by_default():
    """REFERENCE §4: the side is uniform in 1..length unless the config says otherwise."""
    assert augment.Cutout(n_holes=1, length=16).random is True


def test_translate_uses_width_for_x_and_height_for_y_on_a_wide_image(monkeypatch):
    img = _image(h=8, w=16, seed=3)  # PIL size is (16, 8)
    src = _pixels(img)
    monkeypatch.setattr(random, "random", lambda: 0.9)  # keep the sign positive
    shifted_x, shifted_y = np.zeros_like(src), np.zeros_like(src)
    shifted_x[:, :12] = src[:, 4:]  # 0.25 of the width (16) = 4 px
    shifted_y[:6] = src[2:]  # 0.25 of the height (8) = 2 px
    assert np.array_equal(_pixels(_op("TranslateX")(img, 0.25)), shifted_x)
    assert np.array_equal(_pixels(_op("TranslateY")(img, 0.25)), shifted_y)


def test_cutout_centre_ranges_follow_height_and_width_of_a_wide_image(monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda n: n - 1)  # the last row and the last column
    out = augment.Cutout(n_holes=1, length=4, random=False)(torch.ones(1, 4, 12))
    expected = torch.ones(1, 4, 12)
    expected[:, 1:4, 9:12] = 0  # centre (3, 11), half-side 2, clipped at the borders
    assert torch.equal(out, expected)


# Cutout on every strong view -----------------------------------------------------------------------------------
def test_cutout_zeroes_one_square_on_every_image_with_the_expected_mean_area():
    torch.manual_seed(0)
    n, size, length = 4000, 32, 8
    out = ba.cutout(torch.ones(n, 3, size, size), n_holes=1, length=length, random_size=False)
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(dim=1))  # the same hole in every channel
    rows, cols = zero.any(dim=2).sum(dim=1), zero.any(dim=1).sum(dim=1)
    area = zero.sum(dim=(1, 2))
    assert torch.equal(area, rows * cols)  # one rectangle per image: a square clipped at the border
    assert int(area.min()) >= (length // 2) ** 2 and int(area.max()) == length**2  # never skipped, never larger
    # Rows covered for a centre y uniform in 0..31 and half-side 4: min(y + 4, 32) − max(y − 4, 0), which averages
    # (22 + 25 · 8 + 18) / 32 = 7.5; rows and columns are independent, so the mean area is 7.5² = 56.25.
    assert float(area.float().mean()) == pytest.approx(56.25, abs=0.6)
    assert len({tuple(mask.flatten().tolist()) for mask in zero[:200]}) > 150  # each image draws its own place


def test_cutout_with_a_random_side_draws_it_uniformly_from_one_to_length():
    torch.manual_seed(0)
    n, length = 4000, 4
    out = ba.cutout(torch.ones(n, 1, 64, 64), n_holes=1, length=length, random_size=True)
    width = (out[:, 0] == 0).any(dim=1).sum(dim=1)
    # A side s spans s//2 columns each side of the centre: side 1 no hole, sides 2 and 3 two columns, side 4 four
    # (three or two only when its centre is in the first or last column, 2 of 64 places).
    shares = {"no hole": 1 / 4, "side 2 or 3": 2 / 4, "side 4": 1 / 4}
    counts = {
        "no hole": int((width == 0).sum()),
        "side 2 or 3": int((width == 2).sum()),
        "side 4": int((width > 2).sum()),
    }
    assert sum(counts.values()) >= n - 0.02 * n  # the rest: a side 4 at the border
    for name, share in shares.items():
        assert abs(counts[name] / n - share) <= 4 * math.sqrt(share * (1 - share) / n), counts
