"""Stage behaviour beyond the happy path: prerequisites, resume, small data, multi-head sums, frozen backbones."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import moco
import scan
import selflabel
import simclr
from data.loaders import train_loader
from losses import ConfidenceBasedCE, SCANLoss
from models import ClusteringModel, ContrastiveModel, build_backbone
from tests.conftest import ROOT
from utils.checkpoint import CheckpointError
from utils.config import ConfigError
from utils.prerequisites import MissingPrerequisiteError
from utils.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"))
FAST = ["num_workers=0", "backbone_kwargs.base_width=8", "seed=0"]


def test_scan_before_pretext_names_the_missing_files_and_the_command(tiny_cifar_env):
    with pytest.raises(MissingPrerequisiteError) as error:
        scan.main(["--config_env", str(tiny_cifar_env), "--config_exp", str(ROOT / "configs/scan/scan_cifar10.yml")])
    message = str(error.value)
    assert "pretext/model.pth.tar" in message and "topk-train-neighbors.npy" in message and "simclr.py" in message


def test_selflabel_before_scan_names_the_missing_file_and_the_command(tiny_cifar_env):
    with pytest.raises(MissingPrerequisiteError, match=r"(?s)scan/model.pth.tar.*scan.py"):
        selflabel.main(
            ["--config_env", str(tiny_cifar_env), "--config_exp", str(ROOT / "configs/selflabel/selflabel_cifar10.yml")]
        )


def test_wrong_stage_config_is_refused(tiny_cifar_env):
    with pytest.raises(SystemExit, match="setup 'scan'"):
        simclr.main(["--config_env", str(tiny_cifar_env), "--config_exp", str(ROOT / "configs/scan/scan_cifar10.yml")])


def test_batch_larger_than_dataset_is_capped_with_a_warning():
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0))
    with pytest.warns(UserWarning, match="batch_size 512 is larger than the 10"):
        loader = train_loader(dataset, 512, 0, CPU)
    assert len(loader) == 1 and len(next(iter(loader))[0]) == 10


@pytest.mark.slow
def test_simclr_resumes_from_its_checkpoint(tiny_cifar_env, tmp_path, capsys):
    args = [
        "--config_env",
        str(tiny_cifar_env),
        "--config_exp",
        str(ROOT / "configs/pretext/simclr_cifar10.yml"),
        "--set",
        "batch_size=50",
        *FAST,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simclr.main(args + ["epochs=1"])
        capsys.readouterr()
        simclr.main(args + ["epochs=2"])
    out = capsys.readouterr().out
    assert "Resuming from" in out and "at epoch 1" in out and "Epoch 2/2" in out and "Epoch 1/2" not in out
    checkpoint = torch.load(tmp_path / "results/cifar-10/pretext/checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2


def tiny_clustering_model(heads: int) -> ClusteringModel:
    torch.manual_seed(0)
    return ClusteringModel(build_backbone("resnet18", base_width=2), num_classes=4, num_heads=heads)


def pair_loader(n: int = 8):
    torch.manual_seed(1)
    batch = {"anchor": torch.randn(n, 3, 8, 8), "neighbor": torch.randn(n, 3, 8, 8)}
    return [batch]


def test_scan_step_backpropagates_the_sum_over_heads():
    cfg = {"update_cluster_head_only": False, "amp": False}
    model, criterion = tiny_clustering_model(heads=3), SCANLoss(5.0)
    loader = pair_loader()
    model.train()
    with torch.no_grad():
        expected = sum(criterion(a, n)[0] for a, n in zip(model(loader[0]["anchor"]), model(loader[0]["neighbor"])))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    losses = scan.train_one_epoch(loader, model, criterion, optimizer, CPU, cfg, epoch=0)
    assert losses["total"] == pytest.approx(expected.item(), rel=1e-5)
    assert all(head.weight.grad.abs().sum() > 0 for head in model.cluster_head)


def test_a_scan_step_reads_its_values_from_the_device_once_whatever_the_heads(monkeypatch):
    """Each read of a device tensor waits for the GPU: one per step, not one per head and value."""
    cfg = {"update_cluster_head_only": False, "amp": False}
    model, criterion = tiny_clustering_model(heads=3), SCANLoss(5.0)
    with torch.no_grad():
        outputs = zip(model(pair_loader()[0]["anchor"]), model(pair_loader()[0]["neighbor"]))
        parts = torch.stack([torch.stack(criterion(a, n)) for a, n in outputs]).double()
    reads = []
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, original=original, name=name: reads.append(name) or original(self)
        )
    losses = scan.train_one_epoch(
        pair_loader() * 2, model, criterion, torch.optim.SGD(model.parameters(), lr=0.0), CPU, cfg, epoch=0
    )
    monkeypatch.undo()
    assert len(reads) == 2  # two steps
    mean = parts.mean(dim=0)  # the heads' mean consistency and entropy, by hand
    assert (losses["consistency"], losses["entropy"]) == pytest.approx((mean[1].item(), mean[2].item()), rel=1e-6)


def test_update_cluster_head_only_freezes_backbone_and_its_batchnorm():
    from utils.optim import build_optimizer

    cfg = {"update_cluster_head_only": True, "amp": False, "optimizer": "sgd", "optimizer_kwargs": {"lr": 0.5}}
    model = tiny_clustering_model(heads=2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = build_optimizer(cfg, model)
    scan.train_one_epoch(pair_loader(), model, SCANLoss(5.0), optimizer, CPU, cfg, epoch=0)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before if key.startswith("backbone."))
    assert not torch.equal(before["cluster_head.0.weight"], after["cluster_head.0.weight"])
    assert len(optimizer.param_groups[0]["params"]) == 4  # two heads × (weight, bias)


def test_selflabel_starts_from_the_best_head_as_head_zero():
    scan_model = tiny_clustering_model(heads=3)
    state = selflabel.best_head_state_dict({"model": scan_model.state_dict(), "head": np.int64(2)})
    assert torch.equal(state["cluster_head.0.weight"], scan_model.cluster_head[2].weight)
    assert not any(key.startswith(("cluster_head.1", "cluster_head.2")) for key in state)
    tiny_clustering_model(heads=1).load_state_dict(state, strict=True)


def test_selflabel_counts_batches_without_confident_samples_instead_of_crashing():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return [torch.zeros(x.shape[0], 4) + self.w]

    batch = {"image": torch.zeros(4, 3, 2, 2), "image_augmented": torch.zeros(4, 3, 2, 2)}
    model = Uniform()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = selflabel.train_one_epoch(
        [batch, batch], model, ConfidenceBasedCE(0.99, True), optimizer, None, CPU, False, 0
    )
    assert stats == {
        "loss": 0.0,
        "steps": 0,
        "skipped": 2,
        "train_cluster_sizes": [8, 0, 0, 0],  # uniform rows: argmax is the first cluster
        "pseudo_labels_per_cluster": [0, 0, 0, 0],
        "confident": 0.0,
    }


def test_selflabel_epoch_counts_predictions_and_pseudo_labels_per_cluster():
    class Fixed(torch.nn.Module):
        """Logits per image read from its first pixel: images 0–2 → cluster 0 (sure, sure, unsure), 3 → cluster 1."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.logits = torch.tensor([[9.0, 0.0, 0.0], [8.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

        def forward(self, x):
            return [self.logits[x[:, 0, 0, 0].long()] + self.w]

    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    batch = {"image": images, "image_augmented": images}
    optimizer = torch.optim.SGD(Fixed().parameters(), lr=0.0)
    threshold = selflabel.train_one_epoch(
        [batch], Fixed(), ConfidenceBasedCE(0.99, True), optimizer, None, CPU, False, 0
    )
    assert threshold["train_cluster_sizes"] == [3, 1, 0] and threshold["pseudo_labels_per_cluster"] == [2, 0, 0]
    per_cluster = selflabel.train_one_epoch(
        [batch], Fixed(), ConfidenceBasedCE(0.99, True, fraction=0.5), optimizer, None, CPU, False, 0
    )  # shares: ceil(1.5) = 2 of cluster 0 (both above 0.99 anyway), ceil(0.5) = 1 of cluster 1
    assert per_cluster["pseudo_labels_per_cluster"] == [2, 1, 0] and per_cluster["steps"] == 1
    assert threshold["confident"] == 2 / 4 and per_cluster["confident"] == 3 / 4


def write_imagenet_subset(root, wnids, per_class: dict[str, int]):
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 * c + 40, 20, size=(40, 50, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG")


def mocov2_state_dict() -> dict:
    """The key layout of MoCo v2's checkpoint: query/key encoders with an MLP fc, plus the queue."""
    model = ContrastiveModel(build_backbone("resnet50"), head="mlp", features_dim=128)
    state = {}
    for key, value in model.state_dict().items():
        name = key.replace("backbone.", "").replace("contrastive_head.", "fc.")
        state[f"module.encoder_q.{name}"] = value
        state[f"module.encoder_k.{name}"] = torch.zeros_like(value)
    state["module.queue"], state["module.queue_ptr"] = torch.zeros(128, 16), torch.zeros(1, dtype=torch.long)
    return state


@pytest.mark.slow
def test_moco_import_converts_keys_and_mines_backbone_neighbours(tmp_path):
    subset_file = ROOT / "data/imagenet_subsets/imagenet_50.txt"
    wnids = [line.split()[0] for line in subset_file.read_text().splitlines()[:3]]
    write_imagenet_subset(tmp_path / "datasets/imagenet", wnids, {"ILSVRC2012_img_train": 3, "ILSVRC2012_img_val": 2})
    env = tmp_path / "env.yml"
    env.write_text(f"root_dir: {tmp_path / 'results'}\ndata_root: {tmp_path / 'datasets'}\ndownload: false\n")
    config = ROOT / "configs/pretext/moco_imagenet50.yml"
    weights = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    state = mocov2_state_dict()
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the subset copy lacks 47 of its 50 class folders
        metrics = moco.main(
            [
                "--config_env",
                str(env),
                "--config_exp",
                str(config),
                "--moco_weights",
                str(weights),
                "--set",
                "num_workers=0",
                "batch_size=4",
                "topk_neighbors_train=4",
                "topk_neighbors_val=2",
            ]
        )
    pretext = tmp_path / "results/imagenet_50/pretext"
    converted = torch.load(pretext / "model.pth.tar", weights_only=True)
    assert torch.equal(
        converted["backbone.layer1.0.downsample.0.weight"], state["module.encoder_q.layer1.0.downsample.0.weight"]
    )
    assert torch.equal(converted["contrastive_head.2.weight"], state["module.encoder_q.fc.2.weight"])
    assert np.load(pretext / "topk-train-neighbors.npy").shape == (9, 5)
    assert np.load(pretext / "topk-val-neighbors.npy").shape == (6, 3)
    assert json.loads((pretext / "metrics.json").read_text()) == metrics

    not_moco = tmp_path / "plain.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, not_moco)
    with pytest.raises(CheckpointError, match="not a MoCo checkpoint"):
        moco.main(["--config_env", str(env), "--config_exp", str(config), "--moco_weights", str(not_moco)])
    with pytest.raises(CheckpointError, match="not found.*--moco_weights"):
        moco.main(
            ["--config_env", str(env), "--config_exp", str(config), "--moco_weights", str(tmp_path / "missing.pth.tar")]
        )


def test_selflabel_criterion_follows_pseudo_labels_and_refuses_unknown_rules():
    cfg = {
        "criterion": "confidence-cross-entropy",
        "confidence_threshold": 0.99,
        "pseudo_label_fraction": 0.25,
        "criterion_kwargs": {"apply_class_balancing": True},
    }
    threshold = selflabel.build_criterion({**cfg, "pseudo_labels": "threshold"})
    assert type(threshold) is ConfidenceBasedCE and threshold.fraction is None and threshold.threshold == 0.99
    per_cluster = selflabel.build_criterion({**cfg, "pseudo_labels": "per_cluster"})
    assert type(per_cluster) is ConfidenceBasedCE and per_cluster.fraction == 0.25
    with pytest.raises(ConfigError, match="threshold, per_cluster"):
        selflabel.build_criterion({**cfg, "pseudo_labels": "balanced"})
