"""FolderDataset: layout detection, image formats, the saved split, unreadable files, config plumbing."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import simclr
from data.base import DatasetNotFoundError
from data.folder import FolderDataset, open_rgb
from data.registry import get_train_dataset, get_val_dataset
from tests.conftest import ROOT
from tools import dataset_stats
from utils.config import ConfigError, load_config


def write_image(path: Path, color=(200, 30, 60), size=(12, 8), mode: str = "RGB", fmt: str | None = None) -> Path:
    """A solid-colour image of `size` (width, height) in `mode`, saved in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    (image.quantize() if mode == "P" else image.convert(mode)).save(path, fmt)
    return path


def make_classes(root: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{i:02d}.png", color=(10 * i, 20, 30))


def test_class_folders_are_labeled_with_sorted_names(tmp_path):
    make_classes(tmp_path / "data", {"zebra": 5, "ant": 5, "moth": 5})
    train = FolderDataset(tmp_path / "data", split="train")
    test = FolderDataset(tmp_path / "data", split="test")
    assert train.labeled and train.has_labels
    assert train.classes == ["ant", "moth", "zebra"]
    assert (len(train), len(test)) == (12, 3)
    assert sorted(test.targets) == [0, 1, 2]  # a seeded fraction of every class
    for dataset in (train, test):
        for path, target in zip(dataset.paths, dataset.targets):
            assert path.parent.name == dataset.classes[target] and path.is_absolute()
    assert not set(train.paths) & set(test.paths)
    assert train[0]["meta"]["class_name"] == "ant"


def test_loose_images_or_a_single_folder_are_unlabeled(tmp_path):
    write_image(tmp_path / "loose" / "a.png")
    make_classes(tmp_path / "loose", {"x": 4, "y": 4})
    write_image(tmp_path / "one" / "only" / "deeper" / "a.png")
    make_classes(tmp_path / "one", {"only": 4})
    for root in ("loose", "one"):
        dataset = FolderDataset(tmp_path / root, split="train")
        assert not dataset.labeled and not dataset.has_labels
        assert dataset.classes == [] and set(dataset.targets) == {-1}
        assert dataset[0]["meta"]["class_name"] == "unlabeled"


def test_labeled_can_be_forced_either_way(tmp_path):
    make_classes(tmp_path / "data", {"a": 5, "b": 5})
    assert set(FolderDataset(tmp_path / "data", labeled=False).targets) == {-1}
    write_image(tmp_path / "data" / "stray.jpg")
    with pytest.raises(DatasetNotFoundError, match="stray.jpg"):
        FolderDataset(tmp_path / "data", labeled=True)
    with pytest.raises(ConfigError, match="labeled must be auto, true or false"):  # refused by the schema
        custom_config(tmp_path, "data", labeled="maybe")


def test_train_and_test_folders_are_used_as_given(tmp_path):
    make_classes(tmp_path / "data" / "train", {"a": 3, "b": 2})
    make_classes(tmp_path / "data" / "test", {"b": 1, "c": 1})
    train = FolderDataset(tmp_path / "data", split="train", test_fraction=0.9)
    test = FolderDataset(tmp_path / "data", split="test")
    assert train.classes == test.classes == ["a", "b", "c"]  # the union of both parts
    assert train.targets == [0, 0, 0, 1, 1] and test.targets == [1, 2]
    assert all(path.parts[-3] == "test" for path in test.paths)


def test_only_a_train_folder_is_split(tmp_path):
    make_classes(tmp_path / "data" / "train", {"a": 5, "b": 5})
    train, test = (FolderDataset(tmp_path / "data", split=split) for split in ("train", "test"))
    assert (len(train), len(test)) == (8, 2) and train.classes == ["a", "b"]


@pytest.mark.parametrize(
    "name, mode, fmt",
    [
        ("gray.png", "L", None),
        ("rgba.png", "RGBA", None),
        ("palette.png", "P", None),
        ("photo.JPG", "RGB", "JPEG"),
        ("pic.webp", "RGB", None),
        ("pic.BMP", "RGB", None),
        ("cmyk.jpeg", "CMYK", None),
        ("scan.tiff", "RGB", None),
    ],
)
def test_formats_are_read_as_rgb(tmp_path, name, mode, fmt):
    path = write_image(tmp_path / name, color=(120, 120, 120), mode=mode, fmt=fmt)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (12, 8)
    assert np.abs(np.asarray(image, dtype=int) - 120).max() <= 3


def test_transparency_is_white_and_16_bit_is_scaled(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "transparent.png")
    pixels = np.asarray(open_rgb(tmp_path / "transparent.png"))
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[3, 3].tolist() == [255, 255, 255]
    Image.fromarray(np.array([[65535, 128 * 257]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(open_rgb(tmp_path / "deep.png"))[0, :, 0].tolist() == [255, 128]


def test_image_size_resizes_the_shorter_side(tmp_path):
    write_image(tmp_path / "data" / "wide.png", size=(40, 20))
    write_image(tmp_path / "data" / "tall.jpg", size=(20, 60))
    sizes = {path.name: open_rgb(path, 10).size for path in (tmp_path / "data").iterdir()}
    assert sizes == {"wide.png": (20, 10), "tall.jpg": (10, 30)}
    dataset = FolderDataset(tmp_path / "data", split="train", image_size=10, test_fraction=0.5)
    assert min(dataset.load_image(0).size) == 10


def test_saved_split_is_reused_and_stable_when_images_are_added(tmp_path):
    root, split_file = tmp_path / "data", tmp_path / "results" / "split.json"
    make_classes(root, {"a": 6, "b": 6})
    first = {split: FolderDataset(root, split=split, split_file=split_file).paths for split in ("train", "test")}
    saved = json.loads(split_file.read_text())
    assert saved["labeled"] and saved["classes"] == ["a", "b"] and len(saved["test"]) == 2

    make_classes(root, {"a": 9, "c": 3})  # new files a/06..08 and a whole new class
    with pytest.warns(UserWarning, match="6 image.*added after the split"):
        again = {split: FolderDataset(root, split=split, split_file=split_file) for split in ("train", "test")}
    assert {split: dataset.paths for split, dataset in again.items()} == first
    assert again["train"].classes == ["a", "b"]
    without_file = FolderDataset(root, split="test").paths  # a fresh split would differ
    assert without_file != first["test"]


def test_saved_split_must_match_the_config_and_the_files(tmp_path):
    root, split_file = tmp_path / "data", tmp_path / "split.json"
    make_classes(root, {"a": 6, "b": 6})
    test = FolderDataset(root, split="test", split_file=split_file)
    with pytest.raises(ConfigError, match="test_fraction: 0.5 .saved: 0.2"):
        FolderDataset(root, split_file=split_file, test_fraction=0.5)
    with pytest.raises(ConfigError, match="labeled"):
        FolderDataset(root, split_file=split_file, labeled=False)
    test.paths[0].unlink()
    with pytest.raises(DatasetNotFoundError, match=f"(?s)are gone.*{test.paths[0].name}.*delete {split_file}"):
        FolderDataset(root, split="test", split_file=split_file)


def test_unreadable_files_are_skipped_and_reported_once(tmp_path):
    root, split_file = tmp_path / "data", tmp_path / "split.json"
    make_classes(root, {"a": 5, "b": 5})
    (root / "a" / "broken.jpg").write_bytes(b"not an image")
    png = io.BytesIO()
    Image.new("RGB", (30, 30)).save(png, "PNG")
    (root / "b" / "cut.png").write_bytes(png.getvalue()[:60])
    with pytest.warns(UserWarning, match=r"(?s)skipping 2 unreadable.*a/broken.jpg.*b/cut.png"):
        dataset = FolderDataset(root, split_file=split_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = FolderDataset(root, split_file=split_file)  # the saved split remembers them: no second report
    assert again.paths == dataset.paths and all("broken" not in p.name and "cut" not in p.name for p in again.paths)
    assert set(json.loads(split_file.read_text())["unreadable"]) == {"a/broken.jpg", "b/cut.png"}


def test_a_long_list_of_unreadable_files_names_the_first_twenty_and_counts_the_rest(tmp_path):
    root = tmp_path / "data"
    make_classes(root, {"a": 5, "b": 5})
    for i in range(23):
        (root / "a" / f"broken{i:02d}.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning) as caught:
        FolderDataset(root, split_file=tmp_path / "split.json")
    message = str(caught[0].message)
    assert "broken19.jpg" in message and "broken20.jpg" not in message and "... and 3 more" in message


def test_truncated_jpeg_does_not_stop_a_run(tmp_path):
    make_classes(tmp_path / "data" / "test", {"a": 1, "b": 1})
    make_classes(tmp_path / "data" / "train", {"a": 1, "b": 1})
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (tmp_path / "data" / "train" / "a" / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    dataset = FolderDataset(tmp_path / "data", split="train")  # the cut JPEG passes verify()
    index = [path.name for path in dataset.paths].index("cut.jpg")
    with pytest.warns(UserWarning, match="cut.jpg could not be fully decoded"):
        assert dataset.load_image(index).size == (64, 64)


def test_missing_or_empty_folders_say_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="(?s)folder not found.*dataset_kwargs.root"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match="no image files"):
        FolderDataset(tmp_path / "empty")
    write_image(tmp_path / "single" / "a.png")
    with pytest.raises(DatasetNotFoundError, match="test split has no readable images"):
        FolderDataset(tmp_path / "single", test_fraction=0.2)


PRETEXT_TEMPLATE = ROOT / "configs/pretext/simclr_custom.yml"


def write_env(tmp_path: Path) -> Path:
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path / "datasets")}))
    return env


def custom_config(tmp_path: Path, root: str, **dataset_kwargs) -> dict:
    kwargs = [f"dataset_kwargs.{key}={value}" for key, value in {"root": root, **dataset_kwargs}.items()]
    return load_config(write_env(tmp_path), PRETEXT_TEMPLATE, ["train_db_name=flowers", "val_db_name=flowers", *kwargs])


def test_config_root_is_relative_to_data_root_and_split_saved_beside_results(tmp_path):
    make_classes(tmp_path / "datasets" / "my" / "flowers", {"rose": 5, "tulip": 5})
    cfg = custom_config(tmp_path, "my/flowers", image_size=16)
    train, test = get_train_dataset(cfg), get_val_dataset(cfg)
    assert train.root == tmp_path / "datasets" / "my" / "flowers"
    assert (len(train), len(test)) == (8, 2) and train.classes == ["rose", "tulip"]
    assert (tmp_path / "results" / "flowers" / "split.json").is_file()
    assert min(train.load_image(0).size) == 16


def test_dataset_stats_prints_the_yaml_to_paste(tmp_path, capsys):
    for i in range(3):  # red and blue images of equal pixel counts: mean 0.5 and std 0.5 in red and blue
        write_image(tmp_path / "datasets" / "flat" / "train" / f"red{i}.png", color=(255, 0, 0), size=(4, 4))
        write_image(tmp_path / "datasets" / "flat" / "train" / f"blue{i}.png", color=(0, 0, 255), size=(8, 2))
    write_image(tmp_path / "datasets" / "flat" / "test" / "green.png", color=(0, 255, 0))  # not counted
    stats = dataset_stats.main(
        [
            "--config_env",
            str(write_env(tmp_path)),
            "--config_exp",
            str(PRETEXT_TEMPLATE),
            "--set",
            "dataset_kwargs.root=flat",
            "dataset_kwargs.image_size=null",
            "num_workers=0",
        ]
    )
    assert stats["num_images"] == 6
    assert stats["mean"] == pytest.approx([0.5, 0, 0.5]) and stats["std"] == pytest.approx([0.5, 0, 0.5])
    pasted = yaml.safe_load(capsys.readouterr().out.split("three stages:\n")[1])
    assert pasted == {"normalize": {"mean": [0.5, 0.0, 0.5], "std": [0.5, 0.0, 0.5]}}


def test_knn_monitor_counts_label_classes_not_clusters():
    """A labeled folder may hold more classes than the clusters asked for (num_classes); the monitor must cope."""
    batches = [{"image": torch.eye(4), "target": torch.tensor([0, 1, 2, 3])}]
    cfg = {"num_classes": 2, "knn_monitor_k": 1, "criterion_kwargs": {"temperature": 0.1}}
    assert simclr.knn_monitor(torch.nn.Identity(), batches, batches, cfg, torch.device("cpu")) == 1.0


def test_a_large_saved_split_is_trusted_without_walking_the_folder_again(tmp_path, monkeypatch):
    from data import folder

    root, split_file = tmp_path / "data", tmp_path / "split.json"
    make_classes(root, {"a": 6, "b": 6})
    first = FolderDataset(root, split="train", split_file=split_file)
    monkeypatch.setattr(folder, "LARGE_SPLIT", 5)  # as if the 12 images were millions

    def no_walk(_):
        raise AssertionError("a large saved split must not list the folder again")

    monkeypatch.setattr(folder, "find_images", no_walk)
    make_classes(root, {"a": 9})  # new images: not scanned for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = FolderDataset(root, split="train", split_file=split_file)
    assert again.paths == first.paths and again.targets == first.targets
    # A file that has gone is reported when it is read, with the saved split's message instead of a traceback.
    again.paths[0].unlink()
    with pytest.raises(DatasetNotFoundError, match=f"(?s)are gone.*{again.paths[0].name}.*delete {split_file}"):
        again[0]


def test_paths_are_held_as_strings_and_handed_out_as_paths(tmp_path):
    make_classes(tmp_path / "data", {"a": 5, "b": 5})
    dataset = FolderDataset(tmp_path / "data", split="train")
    assert all(type(path) is str for path in dataset.paths._paths)
    assert isinstance(dataset.paths[0], Path) and dataset.paths[0].is_file()
    assert dataset.paths[:2] == [dataset.paths[0], dataset.paths[1]]


def test_classes_missing_from_a_split_are_reported(tmp_path):
    make_classes(tmp_path / "data", {"a": 6, "b": 6, "lonely": 1})
    with pytest.warns(UserWarning, match=r"lonely have no image in the test split.*give every class at least 3 images"):
        test = FolderDataset(tmp_path / "data", split="test")
    assert sorted(set(test.targets)) == [0, 1]  # the lone image stays in the train split


def test_an_unlabeled_folder_is_trained_on_and_shown_whole_unless_a_test_fraction_is_asked_for(tmp_path):
    for i in range(10):
        write_image(tmp_path / "loose" / f"{i}.png", color=(20 * i, 0, 0))
    split_file = tmp_path / "split.json"
    train, test = (FolderDataset(tmp_path / "loose", split=s, split_file=split_file) for s in ("train", "test"))
    assert len(train) == len(test) == 10 and train.paths == test.paths  # every image, in both splits
    saved = json.loads(split_file.read_text())
    assert saved["test_fraction"] == 0 and saved["test"] == saved["train"]
    with pytest.raises(ConfigError, match=r"test_fraction: 0.3 \(saved: 0\)"):
        FolderDataset(tmp_path / "loose", split_file=split_file, test_fraction=0.3)
    held_out = FolderDataset(tmp_path / "loose", split="test", test_fraction=0.3)
    assert len(held_out) == 3  # asked for: a seeded 30 % held out
    # A labeled folder keeps its seeded 0.2 under auto (honest metrics); 0 there is the whole collection too.
    make_classes(tmp_path / "labeled", {"a": 5, "b": 5})
    assert len(FolderDataset(tmp_path / "labeled", split="test")) == 2
    assert len(FolderDataset(tmp_path / "labeled", split="test", test_fraction=0)) == 10


@pytest.mark.parametrize("value", [1, -0.1, 1.5, "half"])
def test_test_fraction_outside_0_to_1_is_refused_by_the_schema(tmp_path, value):
    with pytest.raises(ConfigError, match=r"dataset_kwargs.test_fraction' is .*from 0 \(none.*up to but not 1"):
        custom_config(tmp_path, "flowers", test_fraction=value)


def test_image_size_below_one_pixel_is_refused_by_the_schema(tmp_path):
    with pytest.raises(ConfigError, match="image_size must be a positive whole number of pixels"):
        custom_config(tmp_path, "flowers", image_size=0)
    assert (
        custom_config(tmp_path, "flowers", image_size=1)["dataset_kwargs"]["image_size"] == 1
    )  # one pixel is positive


def test_the_saved_split_names_images_relative_to_the_folder_and_not_where_it_lies(tmp_path):
    make_classes(tmp_path / "datasets" / "flowers", {"rose": 5, "tulip": 5})
    get_train_dataset(custom_config(tmp_path, "flowers", test_fraction=0))
    text = (tmp_path / "results" / "flowers" / "split.json").read_text()
    assert str(tmp_path) not in text and '"rose/00.png": 0' in text
