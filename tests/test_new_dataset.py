"""tools/new_dataset.py: a folder → three configs that load, with the folder's statistics; the printed
commands run as printed (slow end-to-end test, as a new user would run them)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from tests.conftest import ROOT
from tools.new_dataset import choose_geometry, main
from utils.config import load_config

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


def test_the_path_in_own_data_md_is_what_new_dataset_prints(tmp_path, monkeypatch, capsys):
    """docs/own-data.md's first block, run from a working folder with configs/env.yml and 100 images in
    datasets/birds: the printed commands are the block's, word for word (scripts named without their folder)."""
    monkeypatch.chdir(tmp_path)
    for i in range(100):
        (tmp_path / "datasets" / "birds").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 2 * i, 50)).save(tmp_path / "datasets" / "birds" / f"{i:03d}.png")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "env.yml").write_text("root_dir: results\ndata_root: datasets\n")
    block = (ROOT / "docs" / "own-data.md").read_text().split("```bash\n")[1].split("```")[0]
    documented = [shlex.split(line) for line in block.splitlines()]
    main([*documented[0][3:], "--config_dir", "configs", "--config_env", "configs/env.yml"])
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("python ")]
    assert [[words[0], Path(words[1]).name, *words[2:]] for words in printed] == documented[1:]
    assert load_config("configs/env.yml", "configs/scan/scan_birds.yml")["dataset_kwargs"]["root"] == "birds"


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


def write_colour_folder(root: Path) -> None:
    """Three classes of noisy red, green and blue images of 20-35 px, PNG and JPEG."""
    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(14):
            height, width = rng.integers(20, 36, size=2)
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def shell(command: str, cwd: Path = ROOT) -> str:
    """stdout and stderr of `command` run in a shell from `cwd` (the repository folder by default), both going to a
    pipe (as to a log file: no terminal), with this interpreter's `python` first on PATH and the repository
    importable."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def script(command: str) -> str:
    return Path(shlex.split(command)[1]).name


@pytest.mark.slow
def test_the_printed_commands_run_as_printed_and_the_run_moves_to_another_folder(tmp_path):
    """A new user: one command with relative paths and --num_classes auto, then the printed ones, copied into a
    shell; then the whole folder (configs, results, images) copied elsewhere, where nothing is retrained and
    evaluation and prediction run from the same configs."""
    first, moved = tmp_path / "a", tmp_path / "b"
    write_colour_folder(first / "datasets" / "colours")
    (first / "env.yml").write_text("root_dir: results\ndata_root: datasets\n")
    printed = shell(
        "python -m tools.new_dataset --name colours --images datasets/colours --num_classes auto --quick "
        "--config_dir configs --config_env env.yml",
        cwd=first,
    )
    commands = [line for line in printed.splitlines() if line.startswith("python ")]
    order = ["simclr.py", "estimate_k.py", "scan.py", "selflabel.py", "eval.py", "predict.py"]
    assert [script(command) for command in commands] == order
    configs = {path.name: path.read_text() for path in (first / "configs").rglob("*.yml")}
    assert all("   root: colours" in text and str(first) not in text for text in configs.values())
    logs = {}
    for command in commands:
        logs[script(command)] = log = shell(command, cwd=first)
        assert "\r" not in log  # no progress-bar fragments in a log that is not a terminal
        if script(command) in order[2:4]:
            assert len([line for line in log.splitlines() if line.startswith("Epoch ")]) == 1  # one per epoch
    # estimate_k: a K among the candidates, its confidence and the runner-up, written into the SCAN and
    # self-label configs (the pretext config keeps the template's: it has no clusters).
    recommended = json.loads((first / "results/colours_quick/estimate_k/estimate_k.json").read_text())
    k = recommended["recommendation"]["k"]
    assert (
        f"Recommended K = {k} (confidence: " in logs["estimate_k.py"] and "The closest is K=" in logs["estimate_k.py"]
    )
    for stage in ("scan", "selflabel"):
        assert load_config(first / "env.yml", first / f"configs/{stage}/{stage}_colours_quick.yml")["num_classes"] == k
    results = first / "results" / "colours_quick"
    assert "ACC" in logs["eval.py"] and (results / "selflabel/model_eval/report.html").is_file()
    assert f"open {Path('results/colours_quick/selflabel/model_eval/report.html')}" in printed
    # predict.py --sort_into: all 42 images, in one folder per cluster named by the class eval.py matched to it
    # (cluster_NN for a cluster beyond the three classes).
    sorted_files = [path for path in (results / "sorted").rglob("*") if path.is_file()]
    names = {"red", "green", "blue"} | {f"cluster_{cluster:02d}" for cluster in range(k)}
    assert len(sorted_files) == 42 and {path.parent.name for path in sorted_files} <= names

    configs = {path.name: path.read_text() for path in (first / "configs").rglob("*.yml")}
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(moved / "results/colours_quick/sorted")  # predict.py sorts into an empty folder
    models = {stage: (moved / f"results/colours_quick/{stage}/model.pth.tar").read_bytes() for stage in ("scan",)}
    for command in commands:
        if script(command) != "estimate_k.py":
            log = shell(command, cwd=moved)
            assert not [line for line in log.splitlines() if line.startswith("Epoch ")], command  # nothing retrained
    assert {path.name: path.read_text() for path in (moved / "configs").rglob("*.yml")} == configs  # as they were
    assert models["scan"] == (moved / "results/colours_quick/scan/model.pth.tar").read_bytes()
    assert len([path for path in (moved / "results/colours_quick/sorted").rglob("*") if path.is_file()]) == 42
    stale = [str(path) for path in moved.rglob("*") if path.is_file() and str(first).encode() in path.read_bytes()]
    assert stale == []  # nothing in the moved folder names the old one


# ---------------------------------------------------------------- --pretrained: a torchvision/timm model as pretext

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def random_mobilenet_file(path: Path) -> Path:
    """torchvision's MobileNetV3-Small (the cheapest model with published preprocessing), random weights."""
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    return path


def test_pretrained_configs_keep_the_models_own_preprocessing(tmp_path, env, capsys):
    write_folder(tmp_path / "photos", (40, 30))
    weights = random_mobilenet_file(tmp_path / "mobilenet.pth")
    result = main(
        ["--name", "shades", "--images", str(tmp_path / "photos"), "--num_classes", "2"]
        + ["--pretrained", "torchvision:mobilenet_v3_small", "--weights", str(weights)]
        + ["--config_dir", str(tmp_path / "configs"), "--config_env", str(env)]
    )
    names = {stage: Path(path).name for stage, path in result["configs"].items()}
    assert names == {"pretext": "pretrained_shades.yml", "scan": "scan_shades.yml", "selflabel": "selflabel_shades.yml"}
    cfg = {stage: load_config(env, path) for stage, path in result["configs"].items()}
    for stage in cfg.values():
        assert stage["backbone"] == "torchvision:mobilenet_v3_small" and stage["num_classes"] == 2
        assert stage["dataset_kwargs"]["root"] == str(tmp_path / "photos")
        assert stage["dataset_kwargs"]["image_size"] == 256  # torchvision's preset: resize 256, crop 224
        assert stage["transformation_kwargs"] == {}  # so every stage uses the model's own preprocessing
        assert stage["backbone_kwargs"] == {}
    assert (cfg["pretext"]["setup"], cfg["pretext"]["pretrained"], cfg["pretext"]["save_features"]) == (
        "pretrained",
        str(weights),
        True,
    )
    scan_cfg = cfg["scan"]
    assert (scan_cfg["update_cluster_head_only"], scan_cfg["head_input"]) == (True, "cached_features")
    strong = cfg["selflabel"]["augmentation_kwargs"]
    assert (strong["crop_size"], strong["cutout_kwargs"]["length"]) == (224, 75)
    # ImageNet's mean/std (the weights' own), not the folder's: these images' mean is about 0.12-0.2.
    assert strong["normalize"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert not any("CHANGE" in Path(path).read_text() for path in result["configs"].values())
    assert "# 224 px and normalise with its mean/std" in Path(result["configs"]["selflabel"]).read_text()
    assert [command.split()[1] for command in result["commands"]] == [
        "pretrained.py",
        "scan.py",
        "selflabel.py",
        "eval.py",
        "predict.py",
    ]
    assert "Mean" not in capsys.readouterr().out  # nothing computed


def test_pretrained_timm_model_sizes_come_from_its_pretrained_config(tmp_path, env):
    pytest.importorskip("timm", reason="timm is optional (requirements-extra.txt); not installed")
    write_folder(tmp_path / "photos", (20, 20))
    result = main(
        ["--name", "vit", "--images", str(tmp_path / "photos"), "--num_classes", "2", "--quick"]
        + ["--pretrained", "timm:test_vit", "--config_dir", str(tmp_path / "configs"), "--config_env", str(env)]
    )
    pretext, scan_cfg, selflabel_cfg = (load_config(env, path) for path in result["configs"].values())
    # test_vit's pretrained config: 160 px input, crop_pct 0.95 → resized to floor(160 / 0.95) = 168; mean = std = 0.5.
    assert pretext["dataset_kwargs"]["image_size"] == 168 and pretext["pretrained"] == "default"
    strong = selflabel_cfg["augmentation_kwargs"]
    assert (strong["crop_size"], strong["cutout_kwargs"]["length"]) == (160, 53)
    assert strong["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    # --quick: one epoch for the stages that train, small batches, no worker processes.
    assert (scan_cfg["epochs"], selflabel_cfg["epochs"], pretext["batch_size"], pretext["num_workers"]) == (1, 1, 32, 0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--pretrained", "resnet18"], "write torchvision:<model name> or timm:<model name>"),
        (["--pretrained", "torchvison:resnet18"], "write torchvision:<model name> or timm:<model name>"),
        (["--pretrained", "torchvision:resnet1800"], "torchvision has no model 'resnet1800'"),
        (["--pretrained", "torchvision:resnet18", "--weights", "missing.pth"], "--weights missing.pth: no such file"),
        (["--weights", "model.pth"], "give --pretrained NAME too"),
        (["--pretrained", "torchvision:resnet18", "--image_size", "64"], "the model's own preprocessing sets"),
    ],
)
def test_pretrained_mistakes_are_refused_with_what_to_do(tmp_path, env, capsys, options, message):
    write_folder(tmp_path / "photos", (20, 20))
    with pytest.raises(SystemExit):
        main(
            ["--name", "x", "--images", str(tmp_path / "photos"), "--num_classes", "2", *options]
            + ["--config_dir", str(tmp_path / "configs"), "--config_env", str(env)]
        )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "configs").exists() and not (tmp_path / "results").exists()  # nothing written


@pytest.mark.slow
def test_the_printed_pretrained_commands_run_as_printed(tmp_path, env):
    """--pretrained with a local weights file: the printed commands run as printed, each stage's files appear."""
    write_colour_folder(tmp_path / "photos")
    weights = random_mobilenet_file(tmp_path / "mobilenet.pth")
    printed = shell(
        f"python -m tools.new_dataset --name colours --images {shlex.quote(str(tmp_path / 'photos'))} "
        f"--num_classes 3 --quick --pretrained torchvision:mobilenet_v3_small --weights {weights} "
        f"--config_dir {tmp_path / 'configs'} --config_env {env}"
    )
    commands = [line for line in printed.splitlines() if line.startswith("python ")]
    assert [command.split()[1] for command in commands] == [
        "pretrained.py",
        "scan.py",
        "selflabel.py",
        "eval.py",
        "predict.py",
    ]
    logs = [shell(command) for command in commands]
    results = tmp_path / "results" / "colours_quick"
    # Stage 1: weights loaded from the file, neighbours and features of the 33 train / 9 test images.
    assert f"from {weights}" in logs[0]
    assert np.load(results / "pretext" / "topk-train-neighbors.npy").shape == (33, 21)
    assert np.load(results / "pretext" / "features-train.npy").shape == (33, 1024)  # MobileNetV3-Small's width
    assert np.load(results / "pretext" / "features-val.npy").shape == (9, 1024)
    # Stage 2: heads on the cached features, one epoch; stage 3 and eval read the images through the model.
    assert "pairs/s" in logs[1] and len((results / "scan" / "history.jsonl").read_text().splitlines()) == 1
    assert len((results / "selflabel" / "history.jsonl").read_text().splitlines()) == 1
    state = torch.load(results / "selflabel" / "model.pth.tar", weights_only=True)
    assert state["cluster_head.0.weight"].shape == (3, 1024)
    assert "ACC" in logs[3] and (results / "selflabel" / "model_eval" / "report.html").is_file()


def test_images_up_to_64_px_keep_their_size_and_larger_ones_are_read_at_96():
    from tools.new_dataset import choose_geometry

    assert (choose_geometry(64).image_size, choose_geometry(64).stem) == (64, "cifar")
    assert (choose_geometry(65).image_size, choose_geometry(65).stem) == (96, "stl")
