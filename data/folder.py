"""A folder of your own images as a dataset: labeled (one sub-folder per class) or unlabeled.

Layouts below ``root`` (absolute, or relative to ``data_root``)::

    root/train/<class>/*.jpg  +  root/test/<class>/*.jpg     given train and test parts
    root/<class>/*.jpg        or  root/train/<class>/*.jpg    test part split off (seeded)
    root/**/*.jpg                                             unlabeled: images anywhere below root

Stages index images by position (neighbour files), so the first construction writes the train/test file lists to
``split_file`` (``<root_dir>/<train_db_name>/split.json``) and every later one reads them back: images added
afterwards are left out with a notice instead of shifting every index. Unreadable files are skipped at the split.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torchvision.transforms.functional as F
from PIL import Image, ImageFile, ImageOps

from data.base import UNLABELED, DatasetNotFoundError, ImageDataset, dataset_error
from utils.config import ConfigError
from utils.files import write_json
from utils.progress import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")  # compared in lower case
SPLITS = ("train", "test")
MAX_LISTED = 20  # files named in a message; the split file lists them all
# Above this many images a saved split is trusted as it is: the folder is not walked again for new images and
# the files are not stat'ed up front (a million of each costs minutes on network storage); a file that has gone
# is then reported when it is read, with the same message.
LARGE_SPLIT = 100_000
VERIFY_THREADS = 8  # header checks when the split is made are I/O bound: threads overlap the reads

LAYOUT = """\
{root}/
  train/                 (optional: without it, {root}/ itself holds the images)
    cat/ img001.jpg ...  (labeled: one sub-folder per class, at least 2 classes)
    dog/ ...
  test/                  (optional: without it, dataset_kwargs.test_fraction of train is split off)
    cat/ ...
    dog/ ...
or, unlabeled: images anywhere below {root}/ (loose files, any sub-folders)."""


def find_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, symlinks followed), sorted so indices are reproducible; hidden
    ones are left out (macOS ``._name.jpg`` companions carry image extensions but are not images)."""
    found = []
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found += [
            Path(directory) / name
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def open_rgb(path: str | Path, image_size: int | None = None) -> Image.Image:
    """Read an image as 8-bit RGB, upright (EXIF orientation), its shorter side resized to ``image_size`` if given.
    Transparency is laid over white (dropping alpha shows whatever colour hides under it, often black); 16-bit grayscale
    is scaled to 8 bits (PIL's own conversion clips it to white)."""
    with Image.open(path) as image:
        if image_size is not None:
            image.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale still >= image_size
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
    return F.resize(image, image_size) if image_size is not None else image


def read_image(path: str | Path, image_size: int | None = None) -> Image.Image:
    """open_rgb, except that a JPEG or BMP cut short (a broken download, which ``verify()`` cannot see) must not
    end a run hours in: its decodable part is used instead, with a warning naming it."""
    try:
        return open_rgb(path, image_size)
    except FileNotFoundError:
        raise
    except OSError as error:
        warnings.warn(
            f"{path} could not be fully decoded ({error}); using the part that could. Replace or delete the file.",
            stacklevel=2,
        )
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        return open_rgb(path, image_size)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None. ``verify()`` reads the structure without decoding."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(error).__name__}: {error}"
    return None


def resolve_root(root: str | Path, data_root: str | Path) -> Path:
    """``root`` as given when absolute (``~`` expanded), else relative to ``data_root``; made absolute."""
    path = Path(root).expanduser()
    return (path if path.is_absolute() else Path(data_root).expanduser() / path).absolute()


def folder_error(root: Path, problem: str, hint: str) -> DatasetNotFoundError:
    """The reader's error: what is wrong with ``root``, the layouts it accepts, what to do."""
    return dataset_error("Folder dataset", root, problem, LAYOUT.format(root=root.name), hint)


def _absent_classes(absent: list[str], split: str, requested: dict, test_dir: Path | None) -> str:
    """Why some classes have no image in a split, what that costs, and the fix."""
    names = ", ".join(absent)
    if split == "train":
        return f"class folder(s) {names} have no image in train/. Training never sees them: add images to train/."
    if test_dir is not None:
        return f"class folder(s) {names} have no image in test/. The test metrics do not cover them: add some."
    enough = math.ceil(0.5 / requested["test_fraction"])
    return (
        f"class folder(s) {names} have no image in the test split (too few images to split off a "
        f"test_fraction of {requested['test_fraction']}). The test metrics do not cover them: give every class "
        f"at least {enough} images, or add a test/ part."
    )


def _listing(lines: list[str]) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:MAX_LISTED])
    return shown + (f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")


class PathList(Sequence):
    """Absolute image paths kept as plain strings (a million take ~100 MB, as Path objects ~500 MB, in every
    DataLoader worker) and handed out as Path objects."""

    def __init__(self, root: Path, relative_paths) -> None:
        prefix = str(root) + os.sep
        self._paths = [prefix + relative for relative in relative_paths]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [Path(path) for path in self._paths[index]]
        return Path(self._paths[index])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def missing(self) -> list[str]:
        return [path for path in self._paths if not os.path.isfile(path)]


class FolderDataset(ImageDataset):
    """Images below ``root``, split into train and test, labeled by first-level sub-folder or unlabeled.

    ``labeled``: ``'auto'`` (labeled when every image lies in one of at least two first-level sub-folders of its
    part), ``True`` (that layout required) or ``False`` (targets -1). Without a ``test/`` part a seeded
    ``test_fraction`` is held out as the test split (0: none, the test split is every image; ``'auto'``: 0.2 of a
    labeled folder, 0 of an unlabeled one, which has nothing to measure). ``split_file``: where the split is saved
    and read back (None: kept in memory). ``paths``: each sample's absolute path (eval.py's predictions.csv).
    """

    def __init__(
        self,
        root: str | Path,
        data_root: str | Path = ".",
        split: str = "train",
        transform: Callable | None = None,
        labeled: bool | str = "auto",
        image_size: int | None = None,
        test_fraction: float | str = "auto",
        split_seed: int = 0,
        split_file: str | Path | None = None,
    ) -> None:
        super().__init__(transform)
        if split not in SPLITS:
            raise ConfigError(
                f"Folder datasets have the splits {' and '.join(SPLITS)}, not '{split}' "
                f"(set train_split: train in the pretext config)."
            )
        self.root = resolve_root(root, data_root)
        self.image_size = image_size
        if not self.root.is_dir():
            raise folder_error(
                self.root,
                "folder not found",
                "Set dataset_kwargs.root to your image folder (absolute, or relative to data_root).",
            )

        requested = {"labeled": labeled, "test_fraction": test_fraction, "split_seed": split_seed}
        if split_file is not None and Path(split_file).is_file():
            record = self._read_split(Path(split_file), requested)
        else:
            record = self._make_split(requested)
            if split_file is not None:
                write_json(record, split_file)

        self.labeled: bool = record["labeled"]
        self.classes = record["classes"]
        self.split, self.split_file = split, split_file
        self.paths = PathList(self.root, record[split])
        self.targets = list(record[split].values())
        if len(self.paths) <= LARGE_SPLIT:
            missing = self.paths.missing()
            if missing:
                raise self._gone_error(missing)

    def _gone_error(self, missing: list) -> DatasetNotFoundError:
        return folder_error(
            self.root,
            f"{len(missing)} image(s) of the saved {self.split} split are gone:\n{_listing([str(m) for m in missing])}",
            f"Put them back, or delete {self.split_file} to split the folder anew (then rerun every stage from "
            f"simclr.py: the saved neighbours and models refer to the old split).",
        )

    def _make_split(self, requested: dict) -> dict:
        """Index the folder, skip unreadable files, decide labeled or not, split; returns the record to save."""
        train_dir, test_dir = self.root / "train", self.root / "test"
        if not train_dir.is_dir():
            if test_dir.is_dir():
                raise folder_error(
                    self.root,
                    "there is a test/ folder but no train/ folder",
                    "Add the train/ part, or move all images out of test/.",
                )
            train_dir, test_dir = self.root, None
        elif not test_dir.is_dir():
            test_dir = None
        parts = {"train": find_images(train_dir), "test": find_images(test_dir) if test_dir else []}
        found = parts["train"] + parts["test"]
        if not parts["train"]:
            raise folder_error(
                self.root,
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {train_dir}",
                "Point dataset_kwargs.root at the folder that holds your images.",
            )

        unreadable = {}
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            reasons = pool.map(unreadable_reason, found, chunksize=256)
            for path, reason in zip(found, tqdm(reasons, total=len(found), desc=f"Checking {self.root}", leave=False)):
                if reason is not None:
                    unreadable[path.relative_to(self.root).as_posix()] = reason
        if unreadable:
            warnings.warn(
                f"Folder dataset {self.root}: skipping {len(unreadable)} unreadable image file(s):\n"
                + _listing([f"{path}: {reason}" for path, reason in unreadable.items()])
                + "\nFix or delete them; until then they are left out.",
                stacklevel=3,
            )

        # Class folder of each image: the first path component inside its part (train_dir or test_dir).
        folders = {
            path: path.relative_to(part_dir).parts
            for part_dir, paths in ((train_dir, parts["train"]), (test_dir, parts["test"]))
            for path in paths
        }
        class_names = sorted({parts_[0] for parts_ in folders.values() if len(parts_) > 1})
        loose = [str(path) for path, parts_ in folders.items() if len(parts_) == 1]
        looks_labeled = not loose and len(class_names) >= 2
        if requested["labeled"] is True and not looks_labeled:
            problem = (
                f"{len(loose)} image(s) are not inside a class sub-folder:\n{_listing(loose)}"
                if loose
                else f"labeled data needs at least 2 class sub-folders, found {len(class_names)}"
            )
            raise folder_error(
                self.root,
                problem,
                "Move every image into the sub-folder of its class, or set dataset_kwargs.labeled: "
                "false (or auto) to cluster the images without labels.",
            )
        labeled = looks_labeled if requested["labeled"] == "auto" else requested["labeled"]

        class_index = {name: index for index, name in enumerate(class_names)}
        usable: dict[str, dict[str, int]] = {name: {} for name in parts}
        for name, paths in parts.items():
            for path in paths:
                relative = path.relative_to(self.root).as_posix()
                if relative not in unreadable:
                    usable[name][relative] = class_index[folders[path][0]] if labeled else UNLABELED
        if test_dir is None:
            if requested["test_fraction"] == "auto":
                requested = {**requested, "test_fraction": 0.2 if labeled else 0}  # see the class docstring
            usable = self._seeded_split(usable["train"], requested["test_fraction"], requested["split_seed"])
        for name, targets in usable.items():
            if not targets:
                raise folder_error(
                    self.root,
                    f"the {name} split has no readable images",
                    "Add images (or a test/ part), or change dataset_kwargs.test_fraction.",
                )
            shared = name == "test" and targets is usable["train"]  # test_fraction 0: told once, as train
            absent = sorted(set(class_names) - {class_names[t] for t in targets.values()}) if labeled else []
            if absent and not shared:
                warnings.warn(
                    f"Folder dataset {self.root}: {_absent_classes(absent, name, requested, test_dir)}", stacklevel=3
                )
        return {
            "about": "Train/test files of a folder dataset: path relative to root -> target (-1: unlabeled). "
            "Every stage reads these lists; delete this file to split anew (then rerun all stages).",
            "labeled": labeled,
            "classes": class_names if labeled else [],
            # None when the folders gave the split: then these settings played no part.
            "test_fraction": requested["test_fraction"] if test_dir is None else None,
            "split_seed": requested["split_seed"] if test_dir is None else None,
            "train": usable["train"],
            "test": usable["test"],
            "unreadable": unreadable,
        }

    @staticmethod
    def _seeded_split(targets: dict[str, int], test_fraction: float, seed: int) -> dict[str, dict[str, int]]:
        """Move a seeded ``test_fraction`` of each class (so a small class still shows up; of all images when
        unlabeled) to the test split; both lists stay in path order. 0: the test split is every image."""
        if test_fraction == 0:
            return {"train": targets, "test": targets}
        rng = random.Random(seed)
        test_paths = set()
        for target in sorted(set(targets.values())):
            members = [path for path, member_target in targets.items() if member_target == target]
            rng.shuffle(members)
            test_paths.update(members[: round(len(members) * test_fraction)])
        return {
            "train": {path: target for path, target in targets.items() if path not in test_paths},
            "test": {path: target for path, target in targets.items() if path in test_paths},
        }

    def _read_split(self, split_file: Path, requested: dict) -> dict:
        """The saved split, after checking that the config still asks for it and noting any new images."""
        try:
            record = json.loads(split_file.read_text())
        except json.JSONDecodeError as error:
            raise DatasetNotFoundError(
                f"The split file {split_file} is not valid JSON ({error}). Delete it to "
                f"split the folder anew (then rerun every stage from simclr.py)."
            ) from error
        conflicts = []
        if requested["labeled"] != "auto" and requested["labeled"] != record["labeled"]:
            conflicts.append(f"labeled: {requested['labeled']} (saved: {record['labeled']})")
        if record["test_fraction"] is not None:  # None: the split came from train/ and test/ folders
            conflicts += [
                f"{key}: {requested[key]} (saved: {record[key]})"
                for key in ("test_fraction", "split_seed")
                if requested[key] not in (record[key], "auto")
            ]
        if conflicts:
            raise ConfigError(
                f"dataset_kwargs ask for another split than the one saved in {split_file}: "
                f"{'; '.join(conflicts)}. Restore those settings to keep using the saved split, or "
                f"delete {split_file} to split anew (then rerun every stage from simclr.py)."
            )
        if len(record["train"]) + len(record["test"]) > LARGE_SPLIT:
            return record  # trusted as saved: see LARGE_SPLIT
        known = set(record["train"]) | set(record["test"]) | set(record["unreadable"])
        new = [path for path in find_images(self.root) if path.relative_to(self.root).as_posix() not in known]
        if new:
            warnings.warn(
                f"Folder dataset {self.root}: {len(new)} image(s) were added after the split in "
                f"{split_file} was made and are not used, e.g. {new[0]}. To train on them, delete the "
                f"split file and rerun every stage from simclr.py; predict.py assigns new images to "
                f"clusters without retraining.",
                stacklevel=3,
            )
        return record

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (one cut short: its decodable part, see read_image)."""
        try:
            return read_image(self.paths[index], self.image_size)
        except FileNotFoundError:
            raise self._gone_error([self.paths[index]]) from None
