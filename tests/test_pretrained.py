"""torchvision / timm backbones: building by name, weights from a file or the library's cache, preprocessing,
pretrained.py end to end, and SCAN + self-label on top of such a pretext."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

import eval as eval_script
import pretrained
import scan
import selflabel
from data.augment import get_val_transformations
from data.library_preprocessing import library_transform
from models import ClusteringModel, build_backbone, build_model
from models.library import PretrainedWeightsError, load_pretrained_weights
from tests.conftest import ROOT
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, load_config

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18-f37072fd.pth"  # the name torchvision's DEFAULT resnet18 weights have in torch's cache


def random_resnet18_file(path: Path, seed: int = 0) -> dict:
    """A full torchvision ResNet-18 state dict (classifier included) with random weights, saved to `path`."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_torchvision_backbone_is_the_model_without_its_classifier():
    torch.manual_seed(0)
    full = torchvision.models.resnet18(weights=None).eval()
    backbone = build_backbone("torchvision:resnet18").eval()
    assert backbone.out_dim == 512
    assert set(backbone.state_dict()) == {key for key in full.state_dict() if not key.startswith("fc.")}
    backbone.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone(x)
        # The classifier applied to the backbone's output gives the full model's logits.
        assert features.shape == (2, 512)
        torch.testing.assert_close(features @ full.fc.weight.T + full.fc.bias, full(x), rtol=1e-4, atol=1e-5)


def test_classifier_found_in_other_torchvision_layouts():
    # ViT's classifier sits at heads.head; MobileNetV3's is the last of two Linears in `classifier`.
    assert build_backbone("torchvision:vit_b_16").out_dim == 768
    assert build_backbone("torchvision:mobilenet_v3_small").out_dim == 1024


def test_weights_file_loads_and_a_wrong_file_lists_the_keys(tmp_path):
    state = random_resnet18_file(tmp_path / "r18.pth")
    backbone = build_backbone("torchvision:resnet18")
    assert load_pretrained_weights(backbone, "torchvision:resnet18", str(tmp_path / "r18.pth")) == str(
        tmp_path / "r18.pth"
    )
    assert torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # Wrapped the way training scripts save it, with DataParallel's prefix: still loads.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    load_pretrained_weights(
        build_backbone("torchvision:resnet18"), "torchvision:resnet18", str(tmp_path / "wrapped.pth")
    )

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys: layer1.2"):
        load_pretrained_weights(
            build_backbone("torchvision:resnet18"), "torchvision:resnet18", str(tmp_path / "r34.pth")
        )
    with pytest.raises(PretrainedWeightsError, match="not found.*default"):
        load_pretrained_weights(backbone, "torchvision:resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(PretrainedWeightsError, match="pretrained' is not set"):
        load_pretrained_weights(backbone, "torchvision:resnet18", None)


@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch) -> Path:
    """torch's cache in tmp_path and every download failing as it does without a network."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_default_weights_offline_say_where_to_put_the_file(offline_torch_hub):
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained_weights(build_backbone("torchvision:resnet18"), "torchvision:resnet18", "default")
    message = str(error.value)
    assert str(offline_torch_hub / RESNET18_FILE) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message and "pretrained:" in message


def test_default_weights_come_from_the_cache_without_network(offline_torch_hub):
    offline_torch_hub.mkdir(parents=True)
    state = random_resnet18_file(offline_torch_hub / RESNET18_FILE, seed=3)
    backbone = build_backbone("torchvision:resnet18")
    load_pretrained_weights(backbone, "torchvision:resnet18", "default")
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"])


def test_torchvision_preprocessing_comes_from_the_weights_metadata():
    transform = library_transform("torchvision:resnet18")
    colour = (200, 100, 50)
    image = Image.new("RGB", (400, 300), colour)
    tensor = transform(image)
    assert tuple(tensor.shape) == (3, 224, 224)  # resize to 256 then center crop 224
    for channel in range(3):
        expected = (colour[channel] / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert tensor[channel].mean().item() == pytest.approx(expected, abs=1e-5)
    # Every stage's val transform is the library's when the config sets no transformation_kwargs.
    cfg = {"backbone": "torchvision:resnet18", "transformation_kwargs": {}}
    torch.testing.assert_close(get_val_transformations(cfg)(image), tensor)
    own = {"crop_size": 8, "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    assert tuple(get_val_transformations({**cfg, "transformation_kwargs": own})(image).shape) == (3, 8, 8)


def test_missing_timm_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match="requirements-extra.txt"):
        build_backbone("timm:resnet10t")


def test_timm_backbone_weights_and_preprocessing(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is optional (requirements-extra.txt); not installed")
    torch.manual_seed(0)
    full = timm.create_model("test_resnet", pretrained=False).eval()  # with its classifier, as published
    torch.save(full.state_dict(), tmp_path / "test_resnet.pth")
    backbone = build_backbone("timm:test_resnet").eval()
    assert backbone.out_dim == full.num_features
    load_pretrained_weights(backbone, "timm:test_resnet", str(tmp_path / "test_resnet.pth"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(full.get_classifier()(backbone(x)), full(x), rtol=1e-4, atol=1e-5)

    transform = library_transform("timm:test_vit")  # its pretrained config: 160×160, mean = std = 0.5
    tensor = transform(Image.new("RGB", (300, 200), (255, 0, 128)))
    assert tuple(tensor.shape) == (3, 160, 160)
    assert tensor[0].mean().item() == pytest.approx(1.0, abs=1e-5)  # (1 - 0.5) / 0.5
    assert tensor[1].mean().item() == pytest.approx(-1.0, abs=1e-5)
    vit = build_backbone("timm:test_vit")
    with torch.no_grad():
        assert vit(tensor[None]).shape == (1, vit.out_dim)


def test_timm_default_weights_offline_say_where_to_get_them(monkeypatch):
    timm = pytest.importorskip("timm", reason="timm is optional (requirements-extra.txt); not installed")
    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained_weights(build_backbone("timm:test_resnet"), "timm:test_resnet", "default")
    message = str(error.value)
    assert "https://huggingface.co/timm/test_resnet.r160_in1k" in message and "pretrained: /path/to" in message


def test_config_accepts_library_backbones_and_refuses_mistakes(tmp_path):
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "out"), "data_root": str(tmp_path / "data")}))
    config = ROOT / "configs/pretext/pretrained_digits.yml"
    cfg = load_config(
        env, config, ["backbone=timm:vit_small_patch14_dinov2.lvd142m", "pretrained=/x/model.safetensors"]
    )
    assert cfg["setup"] == "pretrained" and cfg["save_features"] is True
    with pytest.raises(ConfigError, match="'backbone' is 'tourchvision:resnet18'"):
        load_config(env, config, ["backbone=tourchvision:resnet18"])
    with pytest.raises(ConfigError, match="Unknown config key 'base_width' in backbone_kwargs"):
        load_config(env, config, ["backbone_kwargs.base_width=8"])
    scan_config = ROOT / "configs/scan/scan_digits_pretrained.yml"
    with pytest.raises(ConfigError, match="'head_input' is 'cached'.*images, cached_features"):
        load_config(env, scan_config, ["head_input=cached"])
    with pytest.raises(ConfigError, match="must be a list or null"):
        load_config(env, scan_config, ["criterion_kwargs.target_prior=3"])


def write_folder_dataset(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """Two classes of images (dark and bright, with noise), in the one-folder-per-class layout."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 50), ("bright", 200)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def pretrained_env(tmp_path: Path) -> Path:
    write_folder_dataset(tmp_path / "datasets" / "blobs")
    env = tmp_path / "env.yml"
    env.write_text(
        yaml.safe_dump(
            {"root_dir": str(tmp_path / "results"), "data_root": str(tmp_path / "datasets"), "download": False}
        )
    )
    return env


# A labeled two-class folder of 16 images (12 train / 4 test) in place of the digits.
FOLDER = [
    "train_db_name=blobs",
    "val_db_name=blobs",
    "num_classes=2",
    "dataset_kwargs={root: blobs, labeled: true, image_size: 40, test_fraction: 0.25, split_seed: 0}",
    "num_workers=0",
    "batch_size=4",
]


@pytest.mark.slow
def test_pretrained_pretext_mines_with_the_library_preprocessing_and_caches_features(tmp_path):
    env = pretrained_env(tmp_path)
    weights = tmp_path / "r18.pth"
    random_resnet18_file(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = pretrained.main(
            [
                "--config_env",
                str(env),
                "--config_exp",
                str(ROOT / "configs/pretext/pretrained_digits.yml"),
                "--set",
                *FOLDER,
                f"pretrained={weights}",
                "topk_neighbors_train=3",
                "topk_neighbors_val=2",
            ]
        )
    pretext = tmp_path / "results/blobs/pretext"
    assert metrics["weights"] == str(weights)
    assert json.loads((pretext / "metrics.json").read_text()) == metrics
    state = torch.load(pretext / "model.pth.tar", weights_only=True)
    assert all(key.startswith("backbone.") for key in state)
    # The file describes itself: a library backbone without projection head, for eval.py and scan.py.
    record = json.loads((pretext / "model.pth.tar.arch.json").read_text())["architecture"]
    assert record == {
        "format": 1,
        "kind": "contrastive",
        "backbone": "torchvision:resnet18",
        "backbone_kwargs": {},
        "model_kwargs": {"head": "none"},
        "dataset": {"name": "blobs", "num_classes": 2, "image_size": 40},  # what it mined, for eval.py's check
    }
    assert torch.equal(state["backbone.layer1.0.conv1.weight"], torch.load(weights)["layer1.0.conv1.weight"])
    assert np.load(pretext / "topk-train-neighbors.npy").shape == (12, 4)
    assert np.load(pretext / "topk-val-neighbors.npy").shape == (4, 3)

    # The cached features are what the backbone gives for the library-preprocessed image.
    features = np.load(pretext / "features-val.npy")
    assert features.dtype == np.float16 and features.shape == (4, 512)
    split = json.loads((tmp_path / "results/blobs/split.json").read_text())
    first_test_image = next(iter(split["test"]))  # the saved split lists the test files in dataset order
    image = Image.open(tmp_path / "datasets/blobs" / first_test_image).convert("RGB")  # already 40 px: no resize
    backbone = build_backbone("torchvision:resnet18").eval()
    load_pretrained_weights(backbone, "torchvision:resnet18", str(weights))
    with torch.no_grad():
        expected = backbone(library_transform("torchvision:resnet18")(image)[None])[0].numpy()
    np.testing.assert_allclose(features[0].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert json.loads((pretext / "features.json").read_text())["classes"] == ["bright", "dark"]

    # eval.py scores the imported pretext model like a SimCLR one: neighbour accuracy on the test split.
    evaluated = eval_script.main(
        [
            "--config_env",
            str(env),
            "--config_exp",
            str(ROOT / "configs/pretext/pretrained_digits.yml"),
            "--model",
            str(pretext / "model.pth.tar"),
            "--set",
            *FOLDER,
        ]
    )
    assert set(evaluated["neighbor_acc"]) == {"1", "5", "20"}


@pytest.mark.slow
def test_scan_and_selflabel_train_on_a_torchvision_pretext(tmp_path):
    env = pretrained_env(tmp_path)
    weights = tmp_path / "r18.pth"
    random_resnet18_file(weights)
    # Small crops keep the CPU test fast: transformation_kwargs overrides the library preprocessing.
    small = ["transformation_kwargs={crop_size: 32, normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}"]
    common = ["--config_env", str(env), "--set", *FOLDER, *small]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrained.main(
            [
                *common[:2],
                "--config_exp",
                str(ROOT / "configs/pretext/pretrained_digits.yml"),
                *common[2:],
                f"pretrained={weights}",
                "topk_neighbors_train=3",
                "topk_neighbors_val=2",
            ]
        )
        scan_config = str(ROOT / "configs/scan/scan_digits_pretrained.yml")
        cached = scan.main([*common[:2], "--config_exp", scan_config, *common[2:], "epochs=2", "num_neighbors=3"])
        assert cached["num_samples"] == 4 and sum(cached["cluster_sizes"]) == 4
        augment = [
            "augmentation_strategy=ours",
            "augmentation_kwargs={crop_size: 32, horizontal_flip: false, num_strong_augs: 1, "
            "normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}, "
            "cutout_kwargs: {n_holes: 1, length: 8, random: true}}",
        ]
        # The paper's path: the whole torchvision network trains on augmented images.
        shutil.rmtree(tmp_path / "results/blobs/scan")
        images = scan.main(
            [
                *common[:2],
                "--config_exp",
                scan_config,
                *common[2:],
                *augment,
                "epochs=1",
                "num_neighbors=3",
                "update_cluster_head_only=false",
                "head_input=images",
            ]
        )
        assert images["num_samples"] == 4
        metrics = selflabel.main(
            [
                *common[:2],
                "--config_exp",
                str(ROOT / "configs/selflabel/selflabel_digits.yml"),
                *common[2:],
                *augment,
                "backbone=torchvision:resnet18",
                "backbone_kwargs={}",
                "epochs=1",
                "confidence_threshold=0.0",
            ]
        )
    assert metrics["num_samples"] == 4
    model = ClusteringModel(build_backbone("torchvision:resnet18"), 2)
    model.load_state_dict(torch.load(tmp_path / "results/blobs/selflabel/model.pth.tar", weights_only=True))


def test_build_model_for_a_pretrained_setup_has_no_projection_head():
    model = build_model({"setup": "pretrained", "backbone": "torchvision:resnet18"})
    assert all(key.startswith("backbone.") for key in model.state_dict())
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))  # L2-normalised backbone features


def test_library_preprocessing_keeps_the_pil_backend_on_a_gpu():
    from utils.runtime import Runtime, resolve_fast_path

    base = {"amp": "auto", "channels_last": "auto", "compile": False, "transformation_kwargs": {}}
    cuda = Runtime(device=torch.device("cuda"))  # only its device type is read
    cfg = {**base, "backbone": "torchvision:resnet18", "augmentation_backend": "auto"}
    resolve_fast_path(cfg, cuda)
    assert cfg["augmentation_backend"] == "pil"  # the library's Resize/CenterCrop exist as PIL transforms only
    own = {"crop_size": 32, "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    cfg = {**base, "backbone": "torchvision:resnet18", "augmentation_backend": "auto", "transformation_kwargs": own}
    resolve_fast_path(cfg, cuda)
    assert cfg["augmentation_backend"] == "batched"
    with pytest.raises(ConfigError, match="pil backend only"):
        resolve_fast_path({**base, "backbone": "timm:resnet10t", "augmentation_backend": "batched"}, cuda)


def test_pretrained_main_saves_the_loaded_backbone_and_its_record_before_mining(tmp_path, monkeypatch):
    """Fast: mining (engine/pretext.py, tested on its own) is replaced by a stub that returns its extras."""
    env = pretrained_env(tmp_path)
    weights = tmp_path / "r18.pth"
    state = random_resnet18_file(weights)
    monkeypatch.setattr(pretrained, "mine_pretext_files", lambda model, cfg, runtime, extra: dict(extra))
    config = ROOT / "configs/pretext/pretrained_digits.yml"
    metrics = pretrained.main(
        ["--config_env", str(env), "--config_exp", str(config), "--weights", str(weights), "--set", *FOLDER]
    )
    assert metrics.pop("record")["inputs"]["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics == {"backbone": "torchvision:resnet18", "weights": str(weights)}
    pretext = tmp_path / "results/blobs/pretext"
    saved = torch.load(pretext / "model.pth.tar", weights_only=True)
    assert torch.equal(saved["backbone.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    record = json.loads((pretext / "model.pth.tar.arch.json").read_text())["architecture"]
    assert record["backbone"] == "torchvision:resnet18" and record["model_kwargs"] == {"head": "none"}


def test_timm_default_weights_are_loaded_into_the_backbone(monkeypatch):
    from models import library

    class TimmModel(torch.nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.body = torch.nn.Linear(3, 4)
            self.head = torch.nn.Linear(4, num_classes) if num_classes else torch.nn.Identity()
            self.pretrained_cfg = {"hf_hub_id": "timm/tiny.test"}

    class Timm:
        @staticmethod
        def create_model(arch: str, pretrained: bool = False, num_classes: int = 1000) -> TimmModel:
            torch.manual_seed(1 if pretrained else 0)
            return TimmModel(num_classes)

    monkeypatch.setattr(library, "import_timm", lambda: Timm)
    backbone = Timm.create_model("tiny", num_classes=0)
    published = Timm.create_model("tiny", pretrained=True, num_classes=0).state_dict()
    assert library.load_pretrained_weights(backbone, "timm:tiny", "default") == "timm's default weights of tiny"
    assert all(torch.equal(value, published[key]) for key, value in backbone.state_dict().items())
