"""predict.py's labeled dataset: one folder per name (what ImageFolder reads), or a CSV of file,label; copies or
links, nothing overwritten."""

from __future__ import annotations

import csv

import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from tools.sort_images import sort_into, write_labels_csv


@pytest.fixture
def photos(tmp_path):
    """Five small PNGs, two of them named x.png, with the names predict.py gave them."""
    names = {"a/x.png": "cat", "b/x.png": "cat", "a/y.png": "dog", "b/z.png": "cat", "b/w.png": "unsure"}
    for i, file in enumerate(names):
        (tmp_path / "in" / file).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(tmp_path / "in" / file)
    return [(tmp_path / "in" / file, name) for file, name in names.items()]


def test_copies_go_to_one_folder_per_name_that_image_folder_reads_back(tmp_path, photos):
    sort_into(photos, tmp_path / "out")
    listing = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert listing == ["cat/x.png", "cat/x_2.png", "cat/z.png", "dog/y.png", "unsure/w.png"]
    assert (tmp_path / "out/cat/x_2.png").read_bytes() == (tmp_path / "in/b/x.png").read_bytes()
    assert not (tmp_path / "out/cat/x.png").is_symlink() and (tmp_path / "in/a/x.png").is_file()  # kept

    dataset = ImageFolder(str(tmp_path / "out"))
    assert dataset.classes == ["cat", "dog", "unsure"]
    assert [dataset.classes[target] for _, target in dataset.samples] == ["cat"] * 3 + ["dog", "unsure"]
    assert dataset[4][0].getpixel((0, 0)) == (160, 0, 0)  # unsure/w.png, the fifth image, read back


def test_links_point_at_the_originals(tmp_path, photos):
    sort_into(photos, tmp_path / "out", link=True)
    link = tmp_path / "out/cat/x_2.png"
    assert link.is_symlink() and link.resolve() == (tmp_path / "in/b/x.png").resolve()
    assert len(ImageFolder(str(tmp_path / "out"))) == 5


def test_the_labels_csv_lists_each_file_with_its_name(tmp_path, photos):
    write_labels_csv(photos[:4], tmp_path / "labels.csv")
    with open(tmp_path / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["file"], row["label"]) for row in rows] == [(str(path), name) for path, name in photos[:4]]


def test_a_folder_that_is_not_empty_is_refused(tmp_path, photos):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        sort_into(photos, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_cluster_folders_have_two_digits_unless_more_clusters_need_more():
    from tools.cluster_names import default_names

    assert default_names(10, {})[3] == "cluster_03"
    assert default_names(2, {})[1] == "cluster_01"
    assert default_names(101, {})[7] == "cluster_007"
    assert default_names(100, {7: "a cat/dog"})[7] == "a cat_dog"
