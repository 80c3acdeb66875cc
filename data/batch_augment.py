"""Batched augmentation on the device: data/augment.py's ``simclr`` / ``ours`` / val transforms for a whole batch.

``get_batch_transformations(cfg)`` maps uint8 images ``[B, 3, H, W]`` (CPU or CUDA, same code) to float32 normalised
views ``[B, 3, S, S]``, each image with its own random draw, as if it had gone through the PIL transform alone.

Why not kornia's or torchvision's tensor ops: several PIL ops are defined by its rounding to 8 bits after every op
(docs/speed.md lists them); kornia's ``enhance`` ops follow other definitions and torchvision's take one scalar per
call. So images stay float tensors of 8-bit levels and each op takes one parameter per image and replays PIL's
arithmetic; library ops serve where their semantics are PIL's (``equalize``, ``center_crop``, ``normalize``,
``grid_sample`` for nearest warps). Random draws use torch's generator on the images' device, and masks replace
data-dependent indexing, so a CUDA batch needs no host round trip. tests/test_batch_augment.py checks against PIL.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from data.augment import OPS, by_strategy

OP_NAMES = [name for name, _, _, _ in OPS]
OP_INDEX = {name: index for index, name in enumerate(OP_NAMES)}
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # drawn with a random sign in augment.py
BLEND_OPS = ("Color", "Contrast", "Brightness", "Sharpness")  # ImageEnhance: blend toward a degenerate image
HUE = 3  # ColorJitter's op order: brightness, contrast, saturation, hue

# ---------------------------------------------------------------- PIL's 8-bit ops, one parameter per image


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """[B] → [B, 1, 1, 1], to broadcast one value per image over C×H×W."""
    return values.reshape(-1, 1, 1, 1)


@functools.cache
def _constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor made once per device: a host → device copy on every call would wait for the GPU."""
    return torch.tensor(values, dtype=dtype, device=device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert('L')``: (19595 R + 38470 G + 7471 B + 2^15) >> 16, exact in float32 (sums < 2^24)."""
    weighted = x[:, 0:1] * 19595.0 + x[:, 1:2] * 38470.0 + x[:, 2:3] * 7471.0
    return torch.floor((weighted + 32768.0) / 65536.0)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)``: degenerate + factor·(x − degenerate), clipped and truncated.
    A factor of 1 returns ``x`` exactly, so images that should be left alone pass through with factor 1."""
    return torch.floor(torch.clamp(degenerate + _per_image(factor) * (x - degenerate), 0.0, 255.0))


def contrast_degenerate(x: torch.Tensor, gray: torch.Tensor | None = None) -> torch.Tensor:
    """ImageEnhance.Contrast's target: the mean of the 8-bit grey image rounded half up, as [B, 1, 1, 1]; the grey
    levels are summed in double precision and rounded by integer division, both exact."""
    gray = grayscale(x) if gray is None else gray
    total, count = gray.double().sum(dim=(-3, -2, -1)), gray.shape[-1] * gray.shape[-2]
    mean = torch.div(2 * total + count, 2 * count, rounding_mode="floor")
    return _per_image(mean.to(x.dtype))


def sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH`` ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded) inside; the 1-pixel border unchanged. The
    kernel sums of integer levels are exact (a 3×3 box sum plus 4× the centre, from shifted slices, which is cheaper
    than a one-channel conv2d on a CPU), and a sum / 13 is never within 1/26 of a rounding tie."""
    if x.shape[-2] < 3 or x.shape[-1] < 3:
        return x
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    smooth = torch.floor((box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0 + 0.5)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return degenerate


def _pil_hue_saturation(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for PIL's RGB → HSV hue and saturation (libImaging/Convert.c rgb2hsv_row), float64 levels. The C code
    mixes float and double steps and truncates, so an exact integer formula would disagree on the values that fall on a
    level boundary; the float/double steps are replayed instead. Used only to fill the small tables of
    :func:`_hsv_tables` (checked against PIL on all 2^24 colours while writing it)."""
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = torch.clamp(maxc - minc, min=1).float()
    s = chroma / torch.clamp(maxc, min=1).float()
    rc, gc, bc = ((maxc - r).float() / chroma), ((maxc - g).float() / chroma), ((maxc - b).float() / chroma)
    rc, gc, bc = rc.double(), gc.double(), bc.double()
    # C: float h = bc - gc (float arithmetic), or 2.0 + rc - bc / 4.0 + gc - rc (double), stored in a float.
    h = torch.where(r == maxc, (bc - gc).float().double(), torch.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h.float().double() / 6.0 + 1.0, 1.0).float()  # fmod in double, stored in a float
    hue = torch.clamp(torch.trunc(h.double() * 255.0), 0, 255)
    saturation = torch.clamp(torch.trunc(s.double() * 255.0), 0, 255)
    gray = maxc == minc
    return torch.where(gray, 0.0, hue), torch.where(gray, 0.0, saturation)


# PIL's HSV → RGB sets each output channel to one of (v, p, q, t) by hue sector (the C switch); item = sector.
_SECTOR_CHANNELS = ["vtp", "qvp", "pvt", "pqv", "tpv", "vpq"]


@functools.cache
def _hsv_tables(device: torch.device) -> dict[str, torch.Tensor]:
    """Lookup tables that turn PIL's 8-bit HSV round trip into three gathers and a multiply.

    RGB → HSV: the hue depends only on which channel is the maximum and which the minimum (6 cases), the chroma
    max − min and the gap max − median, so ``hue[case, chroma, gap]`` (6·256·256 entries) holds it, filled by the
    reference arithmetic on one representative colour per entry; ``saturation[chroma, max]`` likewise.
    HSV → RGB (libImaging/Convert.c hsv2rgb): each channel is round(v · gain) with a gain of (h, s) only: 1 for v,
    and 1 − fs, 1 − fs·f, 1 − fs·(1 − f) for p, q, t, computed with the C code's float/double steps.
    """
    levels = torch.arange(256, dtype=torch.float64)
    chroma, gap = torch.meshgrid(levels, levels, indexing="ij")
    zero, mid = torch.zeros_like(chroma), chroma - gap
    # (r, g, b) with max = chroma, min = 0 and median = chroma − gap, in the case order of adjust_hue.
    cases = [
        (chroma, mid, zero),  # r max, b min
        (chroma, zero, mid),  # r max, g min
        (mid, chroma, zero),  # g max, b min
        (zero, chroma, mid),  # g max, r min
        (zero, mid, chroma),  # b max, r min
        (mid, zero, chroma),  # b max, g min
    ]
    hue = torch.stack([_pil_hue_saturation(*rgb)[0] for rgb in cases]) * (gap <= chroma)
    maximum = levels[None, :].expand(256, 256)
    minimum = torch.clamp(maximum - levels[:, None], min=0)  # saturation[chroma, max] (chroma <= max when used)
    saturation = _pil_hue_saturation(maximum, minimum, minimum)[1]

    h, s = torch.meshgrid(levels, levels, indexing="ij")
    sector_position = h * 6.0 / 255.0
    sector = torch.floor(sector_position).long() % 6
    f = (sector_position - torch.floor(sector_position)).float()
    fs = (s / 255.0).float()
    gains = {
        "v": torch.ones_like(h),
        "p": 1.0 - fs.double(),
        "q": 1.0 - (fs * f).double(),  # a float product in C
        "t": 1.0 - fs.double() * (1.0 - f.double()),
    }
    rgb_gains = torch.zeros(256, 256, 3, dtype=torch.float64)
    for index, channels in enumerate(_SECTOR_CHANNELS):
        for channel, name in enumerate(channels):
            rgb_gains[..., channel] = torch.where(sector == index, gains[name], rgb_gains[..., channel])
    tables = {"hue": hue.reshape(-1), "saturation": saturation.reshape(-1), "rgb_gains": rgb_gains.reshape(-1, 3)}
    return {name: table.float().to(device) for name, table in tables.items()}


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue on a PIL image: PIL 8-bit HSV, hue channel += uint8(factor·255) modulo 256, the
    shift truncated toward zero before wrapping, as numpy's float → uint8 cast does there."""
    tables = _hsv_tables(x.device)
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma, median = maxc - minc, r + g + b - maxc - minc
    case = torch.where(
        r == maxc, (g < b).to(x.dtype), torch.where(g == maxc, 2 + (b > r).to(x.dtype), 4 + (r > g).to(x.dtype))
    )
    hue = tables["hue"][((case * 256 + chroma) * 256 + maxc - median).long()]
    saturation = tables["saturation"][(chroma * 256 + maxc).long()]

    shift = torch.remainder(torch.trunc(factor.double() * 255.0), 256.0).to(x.dtype)
    hue = torch.remainder(hue + _per_image(shift)[:, 0], 256.0)
    gains = tables["rgb_gains"][(hue * 256 + saturation).long()]  # [B, H, W, 3]
    return torch.clamp(torch.floor(maxc[..., None] * gains + 0.5), 0.0, 255.0).movedim(-1, 1)  # C round (>= 0)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: levels ``>= threshold`` are inverted."""
    return torch.where(x >= _per_image(threshold), 255.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the ``bits`` high bits of every level (bits = int(v), as augment.py passes)."""
    step = _per_image(torch.pow(2.0, 8.0 - torch.floor(bits)).to(x.dtype))
    return torch.floor(x / step) * step


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast per channel: the lookup table lut[i] = int(i·scale + offset), scale = 255/(hi − lo),
    built in double precision as PIL does (torchvision's tensor version computes in float32 and lands one level
    lower on some exact integers), then applied by a gather."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    lo, hi = flat.amin(dim=-1, keepdim=True).double(), flat.amax(dim=-1, keepdim=True).double()
    constant = hi <= lo
    scale = 255.0 / torch.where(constant, torch.ones_like(hi), hi - lo)
    levels = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = torch.clamp(torch.trunc(levels * scale + (-lo * scale)), 0, 255)
    lut = torch.where(constant, levels, lut).to(x.dtype)  # [B, C, 256]
    return lut.gather(-1, flat.long()).view_as(x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize per channel, by torchvision (which reproduces PIL's lookup table on uint8 tensors)."""
    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def affine_nearest(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, coeffs)`` (nearest, fill 0) with one 2×3 matrix per image.

    PIL maps the output pixel centre (x + ½, y + ½) through ``coeffs`` to an input point and takes the pixel it
    falls in (floor). That is ``grid_sample(mode='nearest', align_corners=False)`` with the matrix rewritten in
    normalised coordinates; a 1e-4 pixel nudge turns grid_sample's round-half-to-even into PIL's floor at exact
    pixel borders.
    """
    b, _, h, w = x.shape
    m = matrices.double()
    a, bb, c, d, e, f = (m[:, i // 3, i % 3] for i in range(6))
    nudge = 1e-4
    theta = torch.stack(
        [
            torch.stack([a, bb * h / w, a + bb * h / w + (2 * (c + nudge)) / w - 1], dim=1),
            torch.stack([d * w / h, e, d * w / h + e + (2 * (f + nudge)) / h - 1], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def geometric_matrices(op: torch.Tensor, v: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL affine coefficients of augment.py's Rotate / ShearX / ShearY / TranslateX / TranslateY (identity else);
    ``v`` carries the random sign. Rotate is ``Image.rotate(v)``: counter-clockwise by ``v`` degrees about the
    image centre (w/2, h/2), coefficients rounded to 15 decimals like PIL."""
    v = v.double()
    angle = -torch.deg2rad(v)
    cos, sin = torch.round(torch.cos(angle) * 1e15) / 1e15, torch.round(torch.sin(angle) * 1e15) / 1e15
    cx, cy = width / 2.0, height / 2.0
    rotation = torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], dim=1)
    ones, zeros = torch.ones_like(v), torch.zeros_like(v)
    coeffs = torch.stack([ones, zeros, zeros, zeros, ones, zeros], dim=1)  # identity
    candidates = {
        "Rotate": rotation,
        "ShearX": torch.stack([ones, v, zeros, zeros, ones, zeros], dim=1),
        "ShearY": torch.stack([ones, zeros, zeros, v, ones, zeros], dim=1),
        "TranslateX": torch.stack([ones, zeros, v * width, zeros, ones, zeros], dim=1),
        "TranslateY": torch.stack([ones, zeros, zeros, zeros, ones, v * height], dim=1),
    }
    for name, candidate in candidates.items():
        coeffs = torch.where((op == OP_INDEX[name])[:, None], candidate, coeffs)
    return coeffs.reshape(-1, 2, 3)


# ---------------------------------------------------------------- crops: PIL's bilinear resize per image


def _pil_bilinear_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Weights [B, out_size, in_size] of PIL's bilinear resize of the crop [start, start + length) to out_size, as
    libImaging/Resample.c precompute_coeffs: output pixel i samples the crop at (i + ½)·scale with a triangle
    filter widened by the scale when shrinking (antialiasing), taps outside the crop dropped, weights normalised."""
    start, length = start.double(), length.double()
    scale = (length / _constant((float(out_size),), start.device, torch.float64))[:, None, None]  # true division
    support = torch.clamp(scale, min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float64, device=start.device)[None, :, None] + 0.5) * scale
    position = torch.arange(in_size, dtype=torch.float64, device=start.device)[None, None, :] - start[:, None, None]
    weights = torch.clamp(1.0 - ((position - centre + 0.5) / support).abs(), min=0.0)
    weights = weights * ((position >= 0) & (position < length[:, None, None]))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.floor(weights * 2.0**22 + 0.5) / 2.0**22  # PIL's 8-bit path uses 22-bit fixed-point weights


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop box (top, left, height, width) of each image and resize it to ``size`` as PIL's bilinear resize does.

    Two passes, horizontal then vertical, each rounded to 8 bits, like PIL. A box of the output's size is an
    exact crop (the weights are then one-hot), so random and centre crops use this too. Recent Pillow versions
    sometimes run the vertical pass first, which moves some levels by one: results agree with PIL within one
    8-bit level.
    """
    top, left, height, width = boxes.unbind(dim=1)
    weights_x = _pil_bilinear_weights(left, width, x.shape[-1], size[1]).to(x.dtype)  # [B, S_w, W]
    weights_y = _pil_bilinear_weights(top, height, x.shape[-2], size[0]).to(x.dtype)  # [B, S_h, H]
    rows = torch.floor(torch.einsum("bchw,bsw->bchs", x, weights_x) + 0.5)
    return torch.clamp(torch.floor(torch.einsum("bchs,bth->bcts", rows, weights_y) + 0.5), 0.0, 255.0)


def _image_sizes(images: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (height, width) as float64 [B] tensors: the whole canvas unless ``sizes`` says otherwise."""
    if sizes is None:
        b, _, h, w = images.shape
        full = torch.ones(b, dtype=torch.float64, device=images.device)
        return full * h, full * w
    sizes = sizes.to(device=images.device, dtype=torch.float64)
    return sizes[:, 0], sizes[:, 1]


def random_resized_crop_boxes(
    heights: torch.Tensor, widths: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for every image at once → boxes [B, 4] (top, left, h, w): ten
    attempts per image, the first that fits wins; otherwise the same central fallback crop."""
    b, device = heights.shape[0], heights.device
    attempts = 10
    area = (heights * widths)[:, None]
    target_area = area * (
        scale[0] + torch.rand(b, attempts, dtype=torch.float64, device=device) * (scale[1] - scale[0])
    )
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + torch.rand(b, attempts, dtype=torch.float64, device=device) * (log_high - log_low))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.to(torch.int64).argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    top = torch.floor(torch.rand(b, dtype=torch.float64, device=device) * (heights - h + 1))
    left = torch.floor(torch.rand(b, dtype=torch.float64, device=device) * (widths - w + 1))

    in_ratio = widths / heights
    fallback_w = torch.where(
        in_ratio < min(ratio), widths, torch.where(in_ratio > max(ratio), torch.round(heights * max(ratio)), widths)
    )
    fallback_h = torch.where(
        in_ratio < min(ratio), torch.round(widths / min(ratio)), torch.where(in_ratio > max(ratio), heights, heights)
    )
    fallback_top = torch.div(heights - fallback_h, 2, rounding_mode="floor")
    fallback_left = torch.div(widths - fallback_w, 2, rounding_mode="floor")
    boxes = torch.stack([top, left, h, w], dim=1)
    fallback = torch.stack([fallback_top, fallback_left, fallback_h, fallback_w], dim=1)
    return torch.where(found[:, None], boxes, fallback)


def random_crop_boxes(heights: torch.Tensor, widths: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's RandomCrop(size) (no padding) offsets per image → boxes [B, 4]; images must be large enough."""
    b, device = heights.shape[0], heights.device
    top = torch.floor(torch.rand(b, dtype=torch.float64, device=device) * (heights - size[0] + 1))
    left = torch.floor(torch.rand(b, dtype=torch.float64, device=device) * (widths - size[1] + 1))
    full = torch.ones_like(top)
    return torch.stack([top, left, full * size[0], full * size[1]], dim=1)


def _check_crop_fits(images: torch.Tensor, sizes: torch.Tensor | None, size: tuple[int, int]) -> None:
    """An image smaller than the crop is an error, as in torchvision's RandomCrop (checked per image on a canvas)."""
    smallest = (images.shape[-2], images.shape[-1]) if sizes is None else tuple(sizes.min(dim=0).values.tolist())
    if smallest[0] < size[0] or smallest[1] < size[1]:
        raise ValueError(
            f"The crop size {size} is larger than an input image ({smallest[0]}×{smallest[1]}): lower crop_size "
            "(augmentation_kwargs or transformation_kwargs) or use larger images."
        )


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """RandomHorizontalFlip per image."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(_per_image(flip), x.flip(-1), x)


def cutout_hole(h: int, w: int, y: torch.Tensor, x: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """[B, H, W] mask of augment.Cutout's hole: rows max(y − side//2, 0) .. min(y + side//2, h) − 1, likewise
    columns; a side of 1 gives an empty hole (half = 0), as the PIL path's slices do."""
    rows = torch.arange(h, device=y.device)[None, :, None]
    cols = torch.arange(w, device=y.device)[None, None, :]
    half = torch.div(side, 2, rounding_mode="floor")[:, None, None]
    y, x = y[:, None, None], x[:, None, None]
    in_rows = (rows >= (y - half).clamp(min=0)) & (rows < (y + half).clamp(max=h))
    return in_rows & (cols >= (x - half).clamp(min=0)) & (cols < (x + half).clamp(max=w))


def cutout(x: torch.Tensor, n_holes: int, length: int, random_size: bool) -> torch.Tensor:
    """augment.Cutout per image: zero ``n_holes`` squares of side randint(1, length) (or length) centred anywhere."""
    b, _, h, w = x.shape
    device = x.device
    keep = torch.ones(b, h, w, dtype=torch.bool, device=device)
    for _ in range(n_holes):
        if random_size:
            side = torch.randint(1, length + 1, (b,), device=device)
        else:
            side = torch.full((b,), length, device=device)
        y, x_centre = torch.randint(0, h, (b,), device=device), torch.randint(0, w, (b,), device=device)
        keep &= ~cutout_hole(h, w, y, x_centre, side)
    return x * keep[:, None].to(x.dtype)


def _normalize(levels: torch.Tensor, normalize: dict) -> torch.Tensor:
    """ToTensor (÷255) then Normalize, with the same float operations as the PIL path (bit-identical). The divisor
    is a tensor on the images' device: CUDA turns division by a Python number into multiplication by its float32
    reciprocal, which differs from true division in the last bit for about half of the 256 levels."""
    mean = _constant(tuple(normalize["mean"]), levels.device).view(-1, 1, 1)
    std = _constant(tuple(normalize["std"]), levels.device).view(-1, 1, 1)
    return (levels / _constant((255.0,), levels.device)).sub_(mean).div_(std)


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------- the three transforms


def _jitter_range(value, name: str, center: float, bound: float | None = None) -> tuple[float, float] | None:
    """torchvision ColorJitter._check_input: a number v → [center − v, center + v] (clipped at 0), None if a no-op."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"color_jitter.{name} must be non-negative, got {value}")
        low, high = center - value, center + value
        if bound is None:
            low = max(low, 0.0)
    else:
        low, high = float(value[0]), float(value[1])
    if bound is not None and not (-bound <= low <= high <= bound):
        raise ValueError(f"color_jitter.{name} must lie in [-{bound}, {bound}], got {value}")
    return None if low == high == center else (low, high)


class SimCLRBatchTransform:
    """RandomResizedCrop → flip → ColorJitter (p, random order per image) → RandomGrayscale → normalise. ``sizes``
    [B, 2] gives each image's (height, width) when the batch is a zero-padded canvas of images of different sizes
    (decoded folders); crops are then drawn inside each image, as the PIL path would."""

    def __init__(self, kwargs: dict) -> None:
        crop = kwargs["random_resized_crop"]
        self.size = _pair(crop["size"])
        self.scale = tuple(crop.get("scale", (0.08, 1.0)))
        self.ratio = tuple(crop.get("ratio", (3 / 4, 4 / 3)))
        self.flip = kwargs.get("horizontal_flip", True)
        self.jitter_p = kwargs["color_jitter_random_apply"].get("p", 0.5)
        jitter = kwargs["color_jitter"]
        self.ranges = [
            _jitter_range(jitter.get("brightness", 0), "brightness", 1.0),
            _jitter_range(jitter.get("contrast", 0), "contrast", 1.0),
            _jitter_range(jitter.get("saturation", 0), "saturation", 1.0),
            _jitter_range(jitter.get("hue", 0), "hue", 0.0, bound=0.5),
        ]
        self.grayscale_p = kwargs["random_grayscale"].get("p", 0.1)
        self.normalize = kwargs["normalize"]

    def color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision ColorJitter per image: factors uniform in their ranges, the four ops in a random order.
        Brightness, contrast and saturation are blends toward a degenerate image, so each step is one blend with a
        per-image degenerate; hue, the costly op, runs once: the blends drawn before it, hue, the blends after."""
        b, device = x.shape[0], x.device
        applied = torch.rand(b, device=device) < self.jitter_p
        order = torch.argsort(torch.rand(b, 4, device=device), dim=1)  # a uniform random permutation per image
        factors = []
        for bounds in self.ranges:  # a no-op range (e.g. saturation 0) is skipped by torchvision: factor 1
            low, high = bounds if bounds is not None else (1.0, 1.0)
            factors.append(low + torch.rand(b, device=device) * (high - low))
        factors = torch.stack(factors[:3], dim=1)  # [B, 3]: brightness, contrast, saturation
        hue_step = (order == HUE).to(torch.int64).argmax(dim=1)
        for step in range(3):  # the blends drawn before hue
            x = self.blend_step(x, order[:, step], applied & (step < hue_step), factors)
        if self.ranges[HUE] is not None:
            hue_factor = self.ranges[HUE][0] + torch.rand(b, device=device, dtype=torch.float64) * (
                self.ranges[HUE][1] - self.ranges[HUE][0]
            )
            x = torch.where(_per_image(applied), adjust_hue(x, hue_factor), x)
        for step in range(1, 4):  # the blends drawn after hue
            x = self.blend_step(x, order[:, step], applied & (step > hue_step), factors)
        return x

    @staticmethod
    def blend_step(x: torch.Tensor, op: torch.Tensor, active: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Brightness (op 0), contrast (1) or saturation (2) per image where ``active``; factor 1 elsewhere."""
        gray = grayscale(x)
        degenerate = torch.where(
            _per_image(op == 0), 0.0, torch.where(_per_image(op == 1), contrast_degenerate(x, gray), gray)
        )
        factor = factors.gather(1, op.clamp(max=2)[:, None])[:, 0]
        return blend(degenerate, x, torch.where(active, factor, torch.ones_like(factor)))

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        x = images.float()
        heights, widths = _image_sizes(x, sizes)
        x = resized_crop(x, random_resized_crop_boxes(heights, widths, self.scale, self.ratio), self.size)
        if self.flip:
            x = random_flip(x)
        if self.jitter_p > 0:
            x = self.color_jitter(x)
        if self.grayscale_p > 0:
            gray = torch.rand(x.shape[0], device=x.device) < self.grayscale_p
            x = torch.where(_per_image(gray), grayscale(x).expand_as(x), x)
        return _normalize(x, self.normalize)


class StrongBatchTransform:
    """The ``ours`` strategy: flip → RandomCrop → ``num_strong_augs`` ops of augment.OPS per image → normalise → Cutout.

    Every image draws its own ops (with replacement) and magnitudes, uniform over each op's range, with the
    random sign of the geometric ops. The flip is applied after the crop: the crop offset is uniform and
    independent of the flip, so flip-then-crop and crop-then-flip give the same distribution, and the crop then
    never sees the zero padding of a canvas of mixed sizes.
    """

    def __init__(self, kwargs: dict) -> None:
        self.size = _pair(kwargs["crop_size"])
        self.flip = kwargs.get("horizontal_flip", True)
        self.num_ops = int(kwargs["num_strong_augs"])
        self.normalize = kwargs["normalize"]
        cutout_kwargs = kwargs["cutout_kwargs"]
        self.cutout = (int(cutout_kwargs["n_holes"]), int(cutout_kwargs["length"]), cutout_kwargs.get("random", True))
        self.low = tuple(float(low) for _, _, low, _ in OPS)
        self.high = tuple(float(high) for _, _, _, high in OPS)
        self.signed = tuple(name in GEOMETRIC_OPS for name in OP_NAMES)

    def strong_step(self, x: torch.Tensor, op: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One op per image (``op`` [B] indices into OPS, ``v`` [B] magnitudes); ops are grouped by kind."""
        is_op = {name: op == OP_INDEX[name] for name in OP_NAMES}
        h, w = x.shape[-2:]
        geometric = torch.zeros_like(is_op["Rotate"])
        for name in GEOMETRIC_OPS:
            geometric |= is_op[name]
        x = torch.where(_per_image(geometric), affine_nearest(x, geometric_matrices(op, v, h, w)), x)

        degenerate = torch.zeros_like(x)  # Brightness: black
        degenerate = torch.where(_per_image(is_op["Color"]), grayscale(x).expand_as(x), degenerate)
        degenerate = torch.where(_per_image(is_op["Contrast"]), contrast_degenerate(x).expand_as(x), degenerate)
        degenerate = torch.where(_per_image(is_op["Sharpness"]), sharpness_degenerate(x), degenerate)
        blends = torch.zeros_like(geometric)
        for name in BLEND_OPS:
            blends |= is_op[name]
        x = blend(degenerate, x, torch.where(blends, v, torch.ones_like(v)).to(x.dtype))

        x = torch.where(_per_image(is_op["AutoContrast"]), autocontrast(x), x)
        x = torch.where(_per_image(is_op["Equalize"]), equalize(x), x)
        x = torch.where(_per_image(is_op["Solarize"]), solarize(x, v.to(x.dtype)), x)
        x = torch.where(_per_image(is_op["Posterize"]), posterize(x, v.to(x.dtype)), x)
        return x

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        _check_crop_fits(images, sizes, self.size)
        x = images.float()
        heights, widths = _image_sizes(x, sizes)
        x = resized_crop(x, random_crop_boxes(heights, widths, self.size), self.size)
        if self.flip:
            x = random_flip(x)
        b, device = x.shape[0], x.device
        low, high = _constant(self.low, device, torch.float64), _constant(self.high, device, torch.float64)
        signed = _constant(self.signed, device, torch.bool)
        for _ in range(self.num_ops):
            op = torch.randint(0, len(OPS), (b,), device=device)
            v = low[op] + torch.rand(b, dtype=torch.float64, device=device) * (high[op] - low[op])
            negate = signed[op] & (torch.rand(b, device=device) < 0.5)
            x = self.strong_step(x, op, torch.where(negate, -v, v))
        return cutout(_normalize(x, self.normalize), *self.cutout)


class ValBatchTransform:
    """CenterCrop → ToTensor → Normalize on a batch (torchvision's center_crop: same offsets, zero padding). On a
    canvas of mixed sizes (``sizes`` given) each image is centre-cropped inside its own size (at least the crop)."""

    def __init__(self, kwargs: dict) -> None:
        self.size = _pair(kwargs["crop_size"])
        self.normalize = kwargs["normalize"]

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        if sizes is None:
            return _normalize(TF.center_crop(images, list(self.size)).float(), self.normalize)
        _check_crop_fits(images, sizes, self.size)
        heights, widths = _image_sizes(images, sizes)
        full = torch.ones_like(heights)
        top, left = torch.round((heights - self.size[0]) / 2), torch.round((widths - self.size[1]) / 2)
        boxes = torch.stack([top, left, full * self.size[0], full * self.size[1]], dim=1)
        return _normalize(resized_crop(images.float(), boxes, self.size), self.normalize)


def get_batch_transformations(cfg: dict, train: bool = True) -> Callable[..., torch.Tensor]:
    """The batched counterpart of augment.get_train_transformations (``train``) or get_val_transformations."""
    if not train:
        return ValBatchTransform(cfg["transformation_kwargs"])
    return by_strategy(cfg, {"simclr": SimCLRBatchTransform, "ours": StrongBatchTransform})
