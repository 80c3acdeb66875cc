"""Dataset name in a config → dataset object. The one place to add a dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data.cifar import CIFAR10, CIFAR20
from data.digits import Digits
from data.imagenet import ImageNet
from data.stl import STL10

IMAGENET_SUBSETS = ("imagenet_50", "imagenet_100", "imagenet_200")
BUILTIN = ("cifar-10", "cifar-20", "stl-10", "imagenet", *IMAGENET_SUBSETS, "digits")


def folder_split_file(root_dir: str | Path, name: str) -> Path:
    """Where a folder dataset's split is saved: beside the results, so every stage, eval.py and predict.py (and a
    rerun's record) see the same files."""
    return Path(root_dir) / name / "split.json"


def get_dataset(cfg: dict, name: str, split: str, transform: Callable | None = None):
    """Build dataset `name` for split 'train' | 'test' (| 'unlabeled' | 'train+unlabeled' for STL-10). Built-in datasets
    live in `<data_root>/<name>/`; any other name is a folder of your own images whose location is
    `dataset_kwargs.root`."""
    data_root = Path(cfg["data_root"])
    download = cfg.get("download", False)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if name == "cifar-10":
        dataset = CIFAR10(data_root / name, train=split == "train", download=download)
    elif name == "cifar-20":
        dataset = CIFAR20(data_root / name, train=split == "train", download=download)
    elif name == "stl-10":
        dataset = STL10(data_root / name, split=split, download=download)
    elif name == "imagenet" or name in IMAGENET_SUBSETS:
        dataset = ImageNet(
            data_root / "imagenet",
            split="val" if split == "test" else split,
            subset=None if name == "imagenet" else name,
        )
    elif name == "digits":
        dataset = Digits(split=split, **kwargs)
    elif "root" in kwargs:
        from data.folder import FolderDataset

        split_file = folder_split_file(cfg["root_dir"], name)
        dataset = FolderDataset(data_root=data_root, split=split, split_file=split_file, **kwargs)
    else:
        raise ValueError(
            f"Unknown dataset '{name}'. Built-in: {', '.join(BUILTIN)}. "
            "For a folder of your own images set dataset_kwargs.root in the config (see configs/*/..._custom.yml)."
        )
    dataset.transform = transform
    return dataset


def get_train_dataset(cfg: dict, transform: Callable | None = None, split: str = "train"):
    return get_dataset(cfg, cfg["train_db_name"], split, transform)


def get_val_dataset(cfg: dict, transform: Callable | None = None):
    return get_dataset(cfg, cfg["val_db_name"], "test", transform)
