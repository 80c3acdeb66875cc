"""ImageNet (ILSVRC2012) and its 50/100/200-class subsets, read from one folder per wnid.

Images are read with the shorter side resized to 256, where every transform SCAN applies to ImageNet starts, so
prototypes drawn from ``get_image`` show what the model saw.
"""

import warnings
from collections.abc import Callable
from pathlib import Path

import torchvision.transforms.functional as F
from PIL import Image

from data.base import ImageDataset, dataset_error

SUBSETS_DIR = Path(__file__).parent / "imagenet_subsets"
SPLIT_FOLDERS = {"train": "ILSVRC2012_img_train", "val": "ILSVRC2012_img_val"}
IMAGE_SUFFIXES = (".jpeg", ".jpg")  # real files end in .JPEG; compared case-insensitively
RESIZE = 256

LAYOUT = """\
ILSVRC2012_img_train/
  n01440764/
    n01440764_10026.JPEG
    ...
  n01443537/
  ...
ILSVRC2012_img_val/
  n01440764/
    ILSVRC2012_val_00000293.JPEG
    ...
  ..."""

HINT = (
    "Get ILSVRC2012 from https://image-net.org (it needs an account; there is no automatic download) and "
    "sort the validation images into one folder per wnid, like the training images."
)


def read_subset(name: str) -> list[tuple[str, str]]:
    """Return the (wnid, class name) pairs of a subset file; the class index is the line order."""
    path = SUBSETS_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in SUBSETS_DIR.glob("*.txt"))
        raise ValueError(f"unknown ImageNet subset {name!r}; known subsets: {known}")
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, class_name = line.strip().split(maxsplit=1)
            pairs.append((wnid, class_name))
    return pairs


class ImageNet(ImageDataset):
    """ImageNet from ``root/ILSVRC2012_img_{train,val}/<wnid>/*.JPEG``: every wnid folder in sorted order (as
    torchvision's ImageFolder), or with ``subset`` ('imagenet_50', ...) the classes of
    ``data/imagenet_subsets/<subset>.txt`` in line order, folders missing from ``root`` skipped with a warning."""

    def __init__(
        self, root: str | Path, split: str = "train", transform: Callable | None = None, subset: str | None = None
    ) -> None:
        super().__init__(transform)
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"ImageNet split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
        folder = Path(root) / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            raise dataset_error("ImageNet", folder, "folder not found", LAYOUT, HINT)

        if subset is None:
            wnids = sorted(path.name for path in folder.iterdir() if path.is_dir())
            self.classes = wnids
        else:
            pairs = read_subset(subset)
            wnids = [wnid for wnid, _ in pairs]
            self.classes = [class_name for _, class_name in pairs]
            missing = [wnid for wnid in wnids if not (folder / wnid).is_dir()]
            if len(missing) == len(wnids):
                raise dataset_error(
                    "ImageNet", folder, f"none of the {len(wnids)} {subset} class folders found", LAYOUT, HINT
                )
            if missing:
                warnings.warn(
                    f"ImageNet {subset}: {len(missing)} of {len(wnids)} class folders missing in {folder} "
                    f"(e.g. {missing[0]}); loading the other classes",
                    stacklevel=2,
                )

        self.paths: list[Path] = []
        self.targets = []
        for label, wnid in enumerate(wnids):
            class_folder = folder / wnid
            if not class_folder.is_dir():
                continue
            images = sorted(path for path in class_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += images
            self.targets += [label] * len(images)
        if not self.paths:
            raise dataset_error("ImageNet", folder, "no *.JPEG images in the class folders", LAYOUT, HINT)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return F.resize(image.convert("RGB"), RESIZE)
