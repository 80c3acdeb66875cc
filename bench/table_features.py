"""Cached features of scikit-learn's bundled tables (and the digits' raw pixels), for estimate_k.py.

    python bench/table_features.py --dataset wine --root_dir results/tables

estimate_k.py only needs features, targets and neighbours in the layout the pretext stage writes
(data/cached_features.py), so any embedding can be clustered. This writes that layout for a bundled table:
a stratified 80/20 split (seed 0), standardised with the train split's statistics, neighbours mined on the
L2-normalised rows by engine/knn.py, and `backbone: null` in features.json (made without a backbone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.cached_features import META_FILE, feature_paths  # noqa: E402
from engine.knn import mine_nearest_neighbors  # noqa: E402
from utils.files import save_numpy, write_json  # noqa: E402

LOADERS = {
    "wine": datasets.load_wine,
    "iris": datasets.load_iris,
    "breast_cancer": datasets.load_breast_cancer,
    "digits_pixels": datasets.load_digits,
}


def write_table_features(name: str, root_dir: str | Path, topk_train: int = 20, topk_val: int = 5) -> Path:
    """Write <root_dir>/<name>/pretext/{features,targets,topk-*-neighbors}-{train,val}.npy + features.json."""
    table = LOADERS[name]()
    x, y = table.data.astype(np.float32), table.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1.0  # a constant column (the digits' border pixels) stays 0
    pretext = Path(root_dir) / name / "pretext"
    meta = {"backbone": None, "backbone_kwargs": {}, "classes": [str(c) for c in table.target_names]}
    for split, rows, topk in (("train", train, topk_train), ("val", test, topk_val)):
        features = (x[rows] - mean) / std
        normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
        neighbors, accuracy = mine_nearest_neighbors(normalised, y[rows], topk)
        paths = feature_paths(pretext, split)
        save_numpy(features.astype(np.float16), paths["features"])
        save_numpy(y[rows], paths["targets"])
        save_numpy(neighbors, pretext / f"topk-{split}-neighbors.npy")
        meta[split] = {"num_samples": len(rows), "dim": features.shape[1], "dtype": "float16"}
        print(f"{name} {split}: {features.shape}, top-{topk} neighbour accuracy {accuracy:.3f}")
    write_json(meta, pretext / META_FILE)
    return pretext


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cached features of a scikit-learn table for estimate_k.py")
    parser.add_argument("--dataset", choices=sorted(LOADERS), required=True)
    parser.add_argument("--root_dir", required=True, help="features go to ROOT_DIR/<dataset>/pretext/")
    args = parser.parse_args(argv)
    write_table_features(args.dataset, args.root_dir)


if __name__ == "__main__":
    main()
