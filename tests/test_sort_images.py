"""predict.py --sort_into: one folder per cluster, copies or links, nothing overwritten."""

from __future__ import annotations

import pytest

from tools.sort_images import cluster_folder_name, sort_into


def test_folder_names_sort_by_cluster_and_carry_a_safe_class_name():
    assert cluster_folder_name(3, 10) == "cluster_03"
    assert cluster_folder_name(3, 1000) == "cluster_003"
    assert cluster_folder_name(7, 20, "golden retriever") == "cluster_07_golden_retriever"
    assert cluster_folder_name(0, 2, "../etc/passwd") == "cluster_00_etc_passwd"


@pytest.fixture
def photos(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    files = {
        "a/x.jpg": b"first x",
        "b/x.jpg": b"second x",  # same name as a/x.jpg, same cluster below
        "a/y.png": b"y",
        "b/z.png": b"z",
    }
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    clusters = {"a/x.jpg": 1, "b/x.jpg": 1, "a/y.png": 0, "b/z.png": 1}
    return [(tmp_path / "in" / name, clusters[name]) for name in files]


def test_copies_go_to_one_folder_per_cluster(tmp_path, photos):
    counts = sort_into(photos, tmp_path / "out", num_clusters=3, cluster_to_class={1: "cat"})
    assert counts == {0: 1, 1: 3}
    listing = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert listing == ["cluster_00/y.png", "cluster_01_cat/x.jpg", "cluster_01_cat/x_2.jpg", "cluster_01_cat/z.png"]
    assert (tmp_path / "out/cluster_01_cat/x.jpg").read_bytes() == b"first x"
    assert (tmp_path / "out/cluster_01_cat/x_2.jpg").read_bytes() == b"second x"
    assert not (tmp_path / "out/cluster_01_cat/x.jpg").is_symlink()
    assert (tmp_path / "in/a/x.jpg").read_bytes() == b"first x"  # the original is untouched


def test_links_point_at_the_originals(tmp_path, photos):
    sort_into(photos, tmp_path / "out", num_clusters=2, link=True)
    link = tmp_path / "out/cluster_01/x_2.jpg"
    assert link.is_symlink() and link.resolve() == (tmp_path / "in/b/x.jpg").resolve()


def test_a_folder_that_is_not_empty_is_refused(tmp_path, photos):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        sort_into(photos, tmp_path / "out", num_clusters=2)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_cluster_folders_have_two_digits_unless_more_clusters_need_more():
    from tools.sort_images import cluster_folder_name

    assert cluster_folder_name(3, 10) == "cluster_03"
    assert cluster_folder_name(3, 2) == "cluster_03"
    assert cluster_folder_name(7, 101) == "cluster_007"
    assert cluster_folder_name(7, 100, "a cat/dog") == "cluster_07_a_cat_dog"
