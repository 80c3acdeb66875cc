"""Cluster names and `unsure`: the names file eval.py writes and both scripts read, its mistakes, and the path from
eval.py to a labeled dataset (edit the names, rerun, export) that ImageFolder and csv read back."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets import ImageFolder

from engine.model_files import file_sha256, save_scan_file
from tests.conftest import CIFAR10_NAMES, ROOT, TINY
from tests.test_stages import tiny_scan_file
from tools.cluster_names import NAMES_FILE, UNSURE, add_naming_arguments, assign_names, cluster_names, read_names
from utils.config import ConfigError

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_default_names_are_the_matched_classes_else_numbered_clusters(tmp_path):
    path = tmp_path / "eval" / NAMES_FILE
    assert cluster_names(path, 3, {1: "cat", 2: "AC/DC"}, False, SHA_A) == ["cluster_00", "cat", "AC_DC"]
    assert not path.exists()  # predict.py writes none
    assert cluster_names(path, 101, {}, True, SHA_A)[7] == "cluster_007"  # zero-padded: folders sort by cluster
    text = path.read_text()
    assert text.startswith("# The name of each cluster") and "\n7: cluster_007\n" in text
    edited = text.replace("7: cluster_007", "7: golden retriever").replace("8: cluster_008", "8: 2019")
    path.write_text(edited.replace("9: cluster_009", '"9": mésange'), encoding="utf-8")
    names = cluster_names(path, 101, {7: "dog"}, True, SHA_A)  # read back, not overwritten
    assert names[7:10] == ["golden retriever", "2019", "mésange"] and "golden retriever" in path.read_text()


def test_names_written_for_another_model_file_are_used_with_a_warning(tmp_path, capsys):
    path = tmp_path / NAMES_FILE
    cluster_names(path, 2, {0: "cat", 1: "dog"}, True, SHA_A)
    assert f"# Named for the model file with sha256 {SHA_A}\n" in path.read_text()
    capsys.readouterr()
    assert cluster_names(path, 2, {}, False, SHA_A) == ["cat", "dog"]
    assert "warning" not in capsys.readouterr().out  # the same model: silent
    assert cluster_names(path, 2, {}, False, SHA_B) == ["cat", "dog"]  # a retrained model: the names, and a warning
    out = capsys.readouterr().out
    assert (
        f"warning: {path} names the clusters of another model file (sha256 {SHA_A[:12]}, this one {SHA_B[:12]})" in out
    )
    assert "delete the file and rerun eval.py" in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("- cat\n- dog\n", r"holds a list, not cluster numbers mapped to names"),
        ("0: cat\n1: dog\n2: cow\nx: pig\n", r"this model has no cluster 2, x \(remove those lines\)"),
        ("0: cat\n", r"cluster 1 has no name"),
        ("0: cat\n1: ../up\n", r"a name must be a folder name .*1: '\.\./up'"),
        ("0: cat\n1:\n", r"a name must be a folder name .*1: None"),
        ("0: [cat\n", r"is not valid YAML"),
    ],
)
def test_a_badly_formed_names_file_says_what_to_fix(tmp_path, text, message):
    path = tmp_path / NAMES_FILE
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        read_names(path, 2)
    assert "one line `N: name` for each cluster N from 0 to 1" in str(error.value)


def test_images_below_the_threshold_are_unsure_and_clusters_of_one_name_merge():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]])
    output = {"probabilities": probabilities, "predictions": probabilities.argmax(dim=1)}
    names = ["cat", "dog", "cat"]
    assert assign_names(output, names, 0.0) == ["cat", "dog", "cat", "cat"]
    assert assign_names(output, names, 0.6) == ["cat", UNSURE, "cat", "cat"]  # 0.6 itself is not below 0.6
    parser = argparse.ArgumentParser()
    add_naming_arguments(parser)
    assert parser.parse_args([]).unsure_below == 0.0 and parser.parse_args([]).names is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--unsure_below", "1.5"])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_from_eval_to_a_labeled_dataset(tiny_env, tmp_path, capsys):  # noqa: F811
    """docs/own-data.md's steps 4 to 6: eval.py writes the names, the user merges clusters, eval.py and predict.py
    use the names and mark the unsure images, predict.py exports folders and a CSV."""
    import eval as eval_script
    import predict

    tiny_scan_file(tiny_env, head=1)
    model = tiny_env.parent / "results/cifar-10/scan/model.pth.tar"
    common = ["--config_env", str(tiny_env), "--config_exp", str(ROOT / "configs/scan/scan_cifar10.yml")]
    common += ["--model", str(model)]
    overrides = ["--set", *TINY, "num_heads=2"]
    metrics = eval_script.main([*common, *overrides])
    out = model.parent / "model_eval"
    written = yaml.safe_load((out / NAMES_FILE).read_text())
    assert written == {cluster: CIFAR10_NAMES[cls] for cluster, cls in metrics["hungarian_match"]}
    header = "".join(line for line in (out / NAMES_FILE).read_text().splitlines(True) if line.startswith("#"))
    assert f"# Named for the model file with sha256 {file_sha256(model)}" in header
    first = read_csv(out / "predictions.csv")
    assert [row["name"] for row in first] == [written[int(row["cluster"])] for row in first]
    for row in first:  # the runner-up: another cluster, no more probable than the assigned one
        assert row["runner_up"] != row["cluster"] and float(row["runner_up_confidence"]) <= float(row["confidence"])

    # The user names clusters 0-4 `low` and 5-9 `high` (merging them), and sets the uncertain half apart.
    mine = {cluster: "low" if cluster < 5 else "high" for cluster in range(10)}
    (out / NAMES_FILE).write_text(header + yaml.safe_dump(mine))  # as an editor would: the comments stay
    threshold = float(np.median([float(row["confidence"]) for row in first]))
    eval_script.main([*common, "--unsure_below", str(threshold), *overrides])
    rows = read_csv(out / "predictions.csv")
    expected = [UNSURE if float(r["confidence"]) < threshold else mine[int(r["cluster"])] for r in rows]
    assert [row["name"] for row in rows] == expected and expected.count(UNSURE) == 5
    report = (out / "report.html").read_text()
    assert "5 images (50.0 %) are unsure" in report and "cluster 7 · high" in report

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    predict.main([*common, "--images", str(photos), "--output", str(tmp_path / "all.csv"), *overrides])
    confidences = sorted(float(row["confidence"]) for row in read_csv(tmp_path / "all.csv"))
    threshold = (confidences[2] + confidences[3]) / 2  # the three least confident photos are unsure
    predict.main(
        [*common, "--images", str(photos), "--output", str(tmp_path / "p.csv"), "--unsure_below", str(threshold)]
        + ["--sort_into", str(tmp_path / "dataset"), "--labels_csv", str(tmp_path / "labels.csv"), *overrides]
    )
    rows = read_csv(tmp_path / "p.csv")
    expected = {
        row["file"]: UNSURE if float(row["confidence"]) < threshold else mine[int(row["cluster"])] for row in rows
    }
    assert list(expected.values()).count(UNSURE) == 3
    dataset = ImageFolder(str(tmp_path / "dataset"))
    assert dataset.classes == sorted(set(expected.values()))
    assert sorted(dataset.classes[t] for _, t in dataset.samples) == sorted(expected.values())
    assert {row["file"]: row["label"] for row in read_csv(tmp_path / "labels.csv")} == expected

    predict.main(
        [*common, "--images", str(photos), "--output", str(tmp_path / "p2.csv"), "--unsure_below", str(threshold)]
        + ["--skip_unsure", "--sort_into", str(tmp_path / "sure"), "--labels_csv", str(tmp_path / "sure.csv")]
        + overrides
    )
    sure = {file: name for file, name in expected.items() if name != UNSURE}
    assert {row["file"]: row["label"] for row in read_csv(tmp_path / "sure.csv")} == sure
    assert len(ImageFolder(str(tmp_path / "sure"))) == 5 and UNSURE not in ImageFolder(str(tmp_path / "sure")).classes

    # The model is retrained (here: one weight nudged): predict.py still uses the names, and says they were given to
    # another model file.
    capsys.readouterr()
    scan_file = torch.load(model, weights_only=True)
    weight = next(name for name, tensor in scan_file["model"].items() if tensor.is_floating_point())
    scan_file["model"][weight] += 1e-3
    save_scan_file(scan_file["model"], 1, model, scan_file["architecture"])
    predict.main([*common, "--images", str(photos), "--output", str(tmp_path / "r.csv"), *overrides])
    assert f"warning: {out / NAMES_FILE} names the clusters of another model file" in capsys.readouterr().out
    assert {row["name"] for row in read_csv(tmp_path / "r.csv")} <= {"low", "high"}

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit, match=r"none of the 1 file\(s\) can be read as an image"):
        predict.main([*common, "--images", str(tmp_path / "junk"), "--output", str(tmp_path / "j.csv"), *overrides])
