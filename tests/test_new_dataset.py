"""utils/new_dataset.py: a folder → three configs that load, with the folder's statistics; the printed
commands run as printed (slow end-to-end test, as a new user would run them)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT
from utils.config import load_config
from utils.new_dataset import choose_geometry, main

COLOURS = {"dark": (10, 20, 30), "light": (50, 60, 70)}


def write_folder(root: Path, size: tuple[int, int], per_class: int = 10) -> None:
    """Two classes of uniformly coloured images: mean and std are known by hand."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")


@pytest.fixture
def env(tmp_path: Path) -> Path:
    path = tmp_path / "env.yml"
    path.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path / "data")}))
    return path


def test_geometry_keeps_small_images_and_reads_large_ones_at_96():
    small = choose_geometry(32)
    assert (small.image_size, small.stem, small.cutout) == (32, "cifar", 16)  # CIFAR's setting
    large = choose_geometry(480)
    assert (large.image_size, large.stem, large.cutout) == (96, "stl", 32)  # STL-10's setting
    assert choose_geometry(None).stem == "stl"
    forced = choose_geometry(480, image_size=128)
    assert (forced.image_size, forced.stem, forced.cutout) == (128, "cifar", 42) and "1.8x" in forced.reason


def test_configs_are_written_from_the_templates_and_hold_the_folder_statistics(tmp_path, env, capsys):
    write_folder(tmp_path / "photos", (40, 30))
    result = main(
        ["--name", "shades", "--images", str(tmp_path / "photos"), "--num_classes", "2"]
        + ["--config_dir", str(tmp_path / "configs"), "--config_env", str(env)]
    )
    # Every pixel is one of two colours, as many of each in the train split: mean = midpoint, std = half the gap.
    mean = [(a + b) / 2 / 255 for a, b in zip(*COLOURS.values())]
    std = [abs(a - b) / 2 / 255 for a, b in zip(*COLOURS.values())]
    for stage, path in result["configs"].items():
        assert Path(path).name == {"pretext": "simclr", "scan": "scan", "selflabel": "selflabel"}[stage] + "_shades.yml"
        cfg = load_config(env, path)
        assert cfg["train_db_name"] == cfg["val_db_name"] == "shades" and cfg["num_classes"] == 2
        assert cfg["dataset_kwargs"]["root"] == str(tmp_path / "photos")
        assert cfg["dataset_kwargs"]["image_size"] == 30 and cfg["backbone_kwargs"]["stem"] == "cifar"
        assert cfg["transformation_kwargs"]["crop_size"] == 30
        for block in ("augmentation_kwargs", "transformation_kwargs"):
            assert cfg[block]["normalize"]["mean"] == pytest.approx(mean, abs=1e-4)
            assert cfg[block]["normalize"]["std"] == pytest.approx(std, abs=1e-4)
        text = Path(path).read_text()
        assert "CHANGE" not in text and text.startswith(f"# {Path(path).name.split('_')[0]}.py on the images in")
        assert "holds the mean/std of these training images" in text  # the template's instruction replaced
    assert load_config(env, result["configs"]["pretext"])["epochs"] == 500  # the template's, not --quick's
    split = json.loads((tmp_path / "results" / "shades" / "split.json").read_text())
    assert split["labeled"] and (len(split["train"]), len(split["test"])) == (16, 4)
    out = capsys.readouterr().out
    assert "labeled, 2 classes: dark, light" in out and result["commands"][0] in out


def test_bad_input_is_refused_and_existing_configs_are_kept(tmp_path, env):
    common = ["--num_classes", "2", "--config_dir", str(tmp_path / "configs"), "--config_env", str(env)]
    with pytest.raises(SystemExit):
        main(["--name", "cifar-10", "--images", str(tmp_path), *common])  # a built-in name
    with pytest.raises(FileNotFoundError, match="folder not found"):
        main(["--name", "x", "--images", str(tmp_path / "missing"), *common])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        main(["--name", "x", "--images", str(tmp_path / "empty"), *common])
    mine = tmp_path / "configs" / "scan" / "scan_x.yml"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own config\n")
    write_folder(tmp_path / "photos", (20, 20))
    with pytest.raises(SystemExit, match="exist already"):
        main(["--name", "x", "--images", str(tmp_path / "photos"), *common])
    assert mine.read_text() == "my own config\n"
    assert sorted(p.name for p in (tmp_path / "configs").rglob("*") if p.is_file()) == ["scan_x.yml"]


@pytest.mark.slow
def test_the_printed_commands_run_as_printed(tmp_path, env):
    """A new user: one command, then the printed ones, copied into a shell from the repository folder."""
    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(14):
            height, width = rng.integers(20, 36, size=2)
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    shell_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell_env["OMP_NUM_THREADS"] = "1"

    def shell(command: str) -> str:
        """stdout and stderr of `command`, both going to a pipe (as to a log file: no terminal)."""
        done = subprocess.run(command, shell=True, cwd=ROOT, env=shell_env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    printed = shell(
        f"python -m utils.new_dataset --name colours --images {shlex.quote(str(tmp_path / 'photos'))} "
        f"--num_classes 3 --quick --config_dir {tmp_path / 'configs'} --config_env {env}"
    )
    commands = [line for line in printed.splitlines() if line.startswith("python ")]
    assert [command.split()[1] for command in commands] == ["simclr.py", "scan.py", "selflabel.py", "eval.py"]
    for command in commands:
        log = shell(command)
        assert "\r" not in log  # no progress-bar fragments in a log that is not a terminal
        if command.split()[1] != "eval.py":
            assert len([line for line in log.splitlines() if line.startswith("Epoch ")]) == 1  # one per epoch
    assert "ACC" in log
    report = tmp_path / "results" / "colours_quick" / "selflabel" / "model_eval" / "report.html"
    assert report.is_file() and f"open {report}" in printed
    for stage in ("pretext", "scan", "selflabel"):
        assert len((tmp_path / "results" / "colours_quick" / stage / "history.jsonl").read_text().splitlines()) == 1
