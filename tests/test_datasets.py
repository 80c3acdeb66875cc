"""Dataset readers against small files written in the real on-disk formats.

Expected values are built independently of the readers: images are generated in H×W×3 first, then
serialised the way the official files lay them out (CIFAR: channel planes, row-major; STL-10: channel
planes, column-major), so a transposition or channel-order bug shows up as a pixel mismatch.
"""

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.transforms as T
from PIL import Image
from sklearn.datasets import load_digits

from data.base import DatasetNotFoundError
from data.cifar import CIFAR10, CIFAR20
from data.digits import Digits
from data.imagenet import ImageNet
from data.stl import STL10

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The official CIFAR-100 fine -> coarse label table (the `coarse_labels` the real files carry).
CIFAR100_COARSE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def random_images(count: int, size: int, seed: int) -> np.ndarray:
    """count×size×size×3 uint8 noise: no symmetry, so any axis swap changes the pixels."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def write_pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """Serialise H×W×3 images as CIFAR rows: 1024 red bytes (row-major), then green, then blue."""
    return np.stack([np.concatenate([image[:, :, c].ravel() for c in range(3)]) for image in images])


def write_cifar10(root: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    folder = root / "cifar-10-batches-py"
    for name, (images, labels) in batches.items():
        write_pickle(
            folder / name,
            {
                "batch_label": name,
                "labels": labels,
                "data": cifar_rows(images),
                "filenames": [f"{i}.png" for i in range(len(labels))],
            },
        )
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": CIFAR10_NAMES, "num_vis": 3072})


def stl_bytes(images: np.ndarray) -> bytes:
    """Serialise H×W×3 images as STL-10 does: per channel, column by column (Fortran order)."""
    return b"".join(image[:, :, c].flatten(order="F").tobytes() for image in images for c in range(3))


def write_stl(root: Path, train_labels: list[int], test_count: int = 2, unlabeled_count: int = 4) -> dict:
    """Write stl10_binary/ with the given on-disk train labels (1..10); return the images written."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    images = {
        "train": random_images(len(train_labels), 96, seed=1),
        "test": random_images(test_count, 96, seed=2),
        "unlabeled": random_images(unlabeled_count, 96, seed=3),
    }
    for prefix, split_images in images.items():
        (folder / f"{prefix}_X.bin").write_bytes(stl_bytes(split_images))
    (folder / "train_y.bin").write_bytes(bytes(train_labels))
    (folder / "test_y.bin").write_bytes(bytes([3] * test_count))
    (folder / "class_names.txt").write_text("\n".join(CIFAR10_NAMES[:6] + ["monkey"] + CIFAR10_NAMES[7:]) + "\n")
    (folder / "fold_indices.txt").write_text("0 1\n")
    return images


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_pixels_labels_and_names_from_a_truncated_copy(tmp_path):
    first, second = random_images(3, 32, seed=10), random_images(2, 32, seed=11)
    write_cifar10(tmp_path, {"data_batch_1": (first, [0, 9, 3]), "data_batch_2": (second, [5, 5])})

    with pytest.warns(UserWarning, match="data_batch_3"):
        dataset = CIFAR10(tmp_path, train=True)

    assert len(dataset) == 5
    assert dataset.targets == [0, 9, 3, 5, 5]
    assert dataset.classes == CIFAR10_NAMES
    assert dataset.has_labels
    expected = np.concatenate([first, second])
    for i in range(5):
        np.testing.assert_array_equal(dataset.get_image(i), expected[i])
    sample = dataset[1]
    assert isinstance(sample["image"], Image.Image)
    np.testing.assert_array_equal(np.asarray(sample["image"]), expected[1])
    assert sample["target"] == 9
    assert sample["meta"] == {"im_size": (32, 32), "index": 1, "class_name": "truck"}


def test_cifar10_test_split_and_transform_attribute(tmp_path):
    images = random_images(4, 32, seed=12)
    write_cifar10(tmp_path, {"test_batch": (images, [1, 2, 3, 4])})

    dataset = CIFAR10(tmp_path, train=False)
    dataset.transform = T.ToTensor()
    sample = dataset[2]

    assert len(dataset) == 4
    assert sample["image"].shape == (3, 32, 32)
    assert torch.equal(sample["image"], torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    assert sample["meta"]["class_name"] == "cat"


def test_cifar10_missing_folder_names_folder_layout_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10(tmp_path, train=True, download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert f"{tmp_path / 'cifar-10-batches-py'}" in message and "folder not found" in message
    for name in ("data_batch_1", "test_batch", "batches.meta", "download: true"):
        assert name in message


def test_cifar10_missing_test_batch_is_an_error_even_with_train_batches(tmp_path):
    write_cifar10(tmp_path, {"data_batch_1": (random_images(1, 32, seed=0), [0])})
    with pytest.raises(DatasetNotFoundError, match="missing test_batch"):
        CIFAR10(tmp_path, train=False)


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}),
        pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}),
    ],
    ids=["garbage", "wrong-row-size", "no-labels"],
)
def test_cifar10_malformed_file_names_the_file_and_layout(tmp_path, content):
    write_cifar10(tmp_path, {"test_batch": (random_images(1, 32, seed=0), [0])})
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10(tmp_path, train=False)
    message = str(info.value)
    assert "test_batch is malformed" in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "batches.meta" in message  # the expected layout is shown


def test_cifar10_failed_download_explains_and_gives_the_reason(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("data.base.download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10(tmp_path, download=True)
    message = str(info.value)
    assert "no network" in message
    assert torchvision.datasets.CIFAR10.url in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message


def test_cifar10_download_fetches_the_official_archive_into_root(tmp_path, monkeypatch):
    images = random_images(2, 32, seed=13)
    calls = []

    def fake_download(url, download_root, filename=None, md5=None):
        calls.append((url, Path(download_root), filename, md5))
        write_cifar10(Path(download_root), {"test_batch": (images, [7, 8])})

    monkeypatch.setattr("data.base.download_and_extract_archive", fake_download)
    dataset = CIFAR10(tmp_path, train=False, download=True)

    reference = torchvision.datasets.CIFAR10
    assert calls == [(reference.url, tmp_path, reference.filename, reference.tgz_md5)]
    assert dataset.targets == [7, 8]
    np.testing.assert_array_equal(dataset.get_image(1), images[1])

    CIFAR10(tmp_path, train=False, download=True)  # files present now: no second download
    assert len(calls) == 1


# ---------------------------------------------------------------- CIFAR-100-20


def test_cifar20_maps_fine_labels_to_the_20_superclasses(tmp_path):
    fine = list(range(100))[::-1]
    images = random_images(100, 32, seed=20)
    write_pickle(
        tmp_path / "cifar-100-python" / "train",
        {
            "filenames": [f"{i}.png" for i in fine],
            "batch_label": "training batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [CIFAR100_COARSE[f] for f in fine],
            "data": cifar_rows(images),
        },
    )

    dataset = CIFAR20(tmp_path, train=True)

    assert dataset.targets == [CIFAR100_COARSE[f] for f in fine]
    assert len(dataset.classes) == 20
    assert dataset.classes[0] == "aquatic mammals" and dataset.classes[4] == "fruit and vegetables"
    assert dataset.classes[19] == "vehicles 2"
    assert dataset[99]["meta"]["class_name"] == "fruit and vegetables"  # fine label 0 is "apple"
    np.testing.assert_array_equal(dataset.get_image(57), images[57])


def test_cifar20_missing_test_file(tmp_path):
    write_pickle(tmp_path / "cifar-100-python" / "train", {"data": np.zeros((0, 3072), np.uint8), "fine_labels": []})
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR20(tmp_path, train=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "missing test" in message
    assert "meta" in message and "download: true" in message


# ---------------------------------------------------------------- STL-10


def test_stl10_column_major_pixels_and_shifted_labels(tmp_path):
    images = write_stl(tmp_path, train_labels=[1, 10, 5])

    train = STL10(tmp_path, split="train")
    test = STL10(tmp_path, split="test")

    assert train.targets == [0, 9, 4]
    assert test.targets == [2, 2]
    assert train.classes[6] == "monkey" and len(train.classes) == 10
    for i in range(3):
        np.testing.assert_array_equal(train.get_image(i), images["train"][i])
    np.testing.assert_array_equal(test.get_image(1), images["test"][1])
    sample = train[1]
    assert sample["meta"] == {"im_size": (96, 96), "index": 1, "class_name": "truck"}


def test_stl10_unlabeled_and_train_plus_unlabeled(tmp_path):
    images = write_stl(tmp_path, train_labels=[2, 3, 4], unlabeled_count=4)

    unlabeled = STL10(tmp_path, split="unlabeled")
    both = STL10(tmp_path, split="train+unlabeled")

    assert unlabeled.targets == [-1] * 4 and not unlabeled.has_labels
    assert unlabeled[0]["meta"]["class_name"] == "unlabeled"
    assert both.targets == [1, 2, 3, -1, -1, -1, -1] and both.has_labels
    expected = np.concatenate([images["train"], images["unlabeled"]])
    for i in range(7):
        np.testing.assert_array_equal(both.get_image(i), expected[i])
    with pytest.raises(IndexError):
        both.get_image(7)


def test_stl10_missing_folder_and_malformed_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        STL10(tmp_path, split="train")
    message = str(info.value)
    assert str(tmp_path / "stl10_binary") in message
    assert "unlabeled_X.bin" in message and "train_y.bin" in message and "download: true" in message

    write_stl(tmp_path, train_labels=[1, 2])
    with open(tmp_path / "stl10_binary" / "train_X.bin", "ab") as f:
        f.write(b"\0" * 5)
    with pytest.raises(DatasetNotFoundError, match="train_X.bin is malformed") as info:
        STL10(tmp_path, split="train")
    assert str(tmp_path / "stl10_binary") in str(info.value)

    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1]))  # 1 label for 2 images
    with pytest.raises(DatasetNotFoundError, match="test_y.bin is malformed"):
        STL10(tmp_path, split="test")


def test_stl10_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="train\\+unlabeled"):
        STL10(tmp_path, split="validation")


# ---------------------------------------------------------------- ImageNet


def write_jpeg(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 200 if mode == "L" else (200, 40, 90)).save(path, "JPEG", quality=95)


@pytest.fixture
def imagenet_root(tmp_path):
    """Three imagenet_50 classes (lines 1, 2 and 10 of the list) and one class outside it.

    Every image has its own (width, height), so the order of samples can be read off their sizes.
    """
    train = tmp_path / "ILSVRC2012_img_train"
    write_jpeg(train / "n02099267" / "n02099267_2.JPEG", (300, 200))  # line 10: Flat-Coated Retriever
    write_jpeg(train / "n02099267" / "n02099267_1.JPEG", (200, 300))
    write_jpeg(train / "n01669191" / "n01669191_7.JPEG", (333, 200), mode="L")  # line 2: Box Turtle
    write_jpeg(train / "n01601694" / "n01601694_5.JPEG", (256, 260))  # line 1: Dipper
    write_jpeg(train / "n00000001" / "n00000001_1.JPEG", (400, 256))  # not in imagenet_50
    (train / "n01601694" / "notes.txt").write_text("not an image")
    write_jpeg(tmp_path / "ILSVRC2012_img_val" / "n01601694" / "ILSVRC2012_val_00000001.JPEG", (100, 50))
    return tmp_path


def test_imagenet_subset_follows_the_list_order_and_resizes_shorter_side(imagenet_root):
    with pytest.warns(UserWarning, match="47 of 50"):
        dataset = ImageNet(imagenet_root, split="train", subset="imagenet_50")

    assert len(dataset.classes) == 50
    assert dataset.classes[:3] == ["Dipper", "Box Turtle", "Diamondback Snake"]
    assert dataset.classes[9] == "Flat-Coated Retriever" and dataset.classes[49] == "Banana"
    assert dataset.targets == [0, 1, 9, 9]
    # Shorter side -> 256, longer side int(256 * long / short), as transforms.Resize(256) does.
    sizes = [dataset[i]["meta"]["im_size"] for i in range(4)]
    assert sizes == [(260, 256), (256, 426), (384, 256), (256, 384)]  # (h, w); _1.JPEG before _2.JPEG
    image = dataset.get_image(1)  # a grayscale JPEG comes back as RGB
    assert image.shape == (256, 426, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - 200).max() <= 3
    assert dataset[2]["meta"]["class_name"] == "Flat-Coated Retriever"


def test_imagenet_without_subset_uses_every_folder_in_sorted_order(imagenet_root):
    dataset = ImageNet(imagenet_root, split="train")
    assert dataset.classes == ["n00000001", "n01601694", "n01669191", "n02099267"]
    assert dataset.targets == [0, 1, 2, 3, 3]
    assert dataset[0]["meta"]["im_size"] == (256, 400)


def test_imagenet_val_split(imagenet_root):
    with pytest.warns(UserWarning, match="49 of 50"):
        val = ImageNet(imagenet_root, split="val", subset="imagenet_50")
    assert val.targets == [0]
    assert val[0]["meta"]["im_size"] == (256, 512)


def test_imagenet_missing_folder_or_classes(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        ImageNet(tmp_path, split="train")
    message = str(info.value)
    assert str(tmp_path / "ILSVRC2012_img_train") in message
    assert "ILSVRC2012_img_val/" in message and ".JPEG" in message

    write_jpeg(tmp_path / "ILSVRC2012_img_train" / "n00000001" / "a.JPEG", (10, 10))
    with pytest.raises(DatasetNotFoundError, match="none of the 50 imagenet_50 class folders"):
        ImageNet(tmp_path, split="train", subset="imagenet_50")
    with pytest.raises(ValueError, match="imagenet_100"):
        ImageNet(tmp_path, split="train", subset="imagenet_7")


# ---------------------------------------------------------------- Digits


def test_digits_split_is_fixed_stratified_disjoint_and_complete():
    train, test = Digits(split="train"), Digits(split="test")
    targets = load_digits().target

    assert len(train) + len(test) == 1797
    assert len(test) == 360  # ceil(0.2 * 1797), scikit-learn's rounding of test_size
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted(train.indices + test.indices) == list(range(1797))
    assert train.targets == targets[train.indices].tolist()
    for digit in range(10):
        share = test.targets.count(digit) / np.sum(targets == digit)
        assert abs(share - 0.2) < 0.02
    assert train.classes == [str(d) for d in range(10)]

    again = Digits(split="test")
    assert again.indices == test.indices
    np.testing.assert_array_equal(again.get_image(5), test.get_image(5))
    assert Digits(split="test", seed=1).indices != test.indices


def test_digits_images_are_scaled_rgb_uint8():
    native = Digits(split="train", image_size=8)
    raw = load_digits().images[native.indices[3]]
    image = native.get_image(3)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:, :, 0], np.round(raw * 255 / 16))
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])

    sample = Digits(split="train")[3]
    assert sample["image"].size == (16, 16) and sample["image"].mode == "RGB"
    assert sample["meta"]["class_name"] == str(load_digits().target[native.indices[3]])
    with pytest.raises(ValueError):
        Digits(split="val")
