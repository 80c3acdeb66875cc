"""predict.py --sort_into: copy (or link) images into one folder per cluster, the way people browse a clustering.

    sorted/cluster_00_finch/IMG_0001.jpg
    sorted/cluster_01/IMG_0417.jpg          (no matched class: eval.py had no labels, or was not run)

The originals are never moved or changed, and nothing is overwritten: the target folder must be new or empty,
and two images of the same name in one cluster are kept apart by a numeric suffix (IMG_0001_2.jpg).
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path


def cluster_folder_name(cluster: int, num_clusters: int, class_name: str = "") -> str:
    """`cluster_03` or `cluster_03_<class>`: zero-padded so that folders sort by cluster in any file browser."""
    width = max(2, len(str(num_clusters - 1)))
    name = f"cluster_{cluster:0{width}d}"
    slug = re.sub(r"[^\w.-]+", "_", class_name).strip("._")  # no path separators or spaces in a folder name
    return f"{name}_{slug}" if slug else name


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


def sort_into(
    assignments: list[tuple[Path, int]],
    folder: str | Path,
    num_clusters: int,
    cluster_to_class: dict[int, str] | None = None,
    link: bool = False,
) -> dict[int, int]:
    """Copy (`link`: symlink) each (image, cluster) into folder/<cluster folder>/; returns images per cluster."""
    folder = Path(folder)
    check_target_folder(folder)
    cluster_to_class = cluster_to_class or {}
    taken: dict[int, set[str]] = {}
    for source, cluster in assignments:
        target_dir = folder / cluster_folder_name(cluster, num_clusters, cluster_to_class.get(cluster, ""))
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / _free_name(Path(source).name, taken.setdefault(cluster, set()))
        if link:
            os.symlink(Path(source).resolve(), target)
        else:
            shutil.copy2(source, target)
    counts = Counter(cluster for _, cluster in assignments)
    return {cluster: counts[cluster] for cluster in sorted(counts)}
