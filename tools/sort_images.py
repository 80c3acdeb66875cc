"""predict.py's labeled dataset: the images copied (or linked) into one folder per cluster name, the layout
torchvision's ImageFolder reads, and/or a CSV of file,label.

    sorted/finch/IMG_0001.jpg               (the cluster's name: tools/cluster_names.py)
    sorted/cluster_01/IMG_0417.jpg          (a cluster nobody named)
    sorted/unsure/IMG_0022.jpg              (below --unsure_below)

The originals are never moved or changed, and nothing is overwritten: the target folder must be new or empty,
and two images of the same name in one folder are kept apart by a numeric suffix (IMG_0001_2.jpg).
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from utils.files import atomic_write


def _free_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem_2.ext`, `stem_3.ext`, ... when an image of that name is already in the folder."""
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}_{number}{suffix}"
    taken.add(candidate)
    return candidate


def check_target_folder(folder: str | Path) -> None:
    """Stop before any work when `folder` exists and is not an empty folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SystemExit(
            f"error: --sort_into {folder}: {'not a folder' if not folder.is_dir() else 'the folder is not empty'}. "
            f"Name a new or empty folder (nothing is ever overwritten)."
        )


def sort_into(assignments: list[tuple[Path, str]], folder: str | Path, link: bool = False) -> None:
    """Copy (`link`: symlink) each (image, name) into folder/<name>/."""
    folder = Path(folder)
    check_target_folder(folder)
    taken: dict[str, set[str]] = {}
    for source, name in assignments:
        (folder / name).mkdir(parents=True, exist_ok=True)
        target = folder / name / _free_name(Path(source).name, taken.setdefault(name, set()))
        if link:
            os.symlink(Path(source).resolve(), target)
        else:
            shutil.copy2(source, target)


def write_labels_csv(assignments: list[tuple[Path, str]], path: str | Path) -> None:
    """The same assignments as a CSV of file,label (the file as given), for pandas or a CSV dataset reader."""
    with atomic_write(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "label"), *assignments])
