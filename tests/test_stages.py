"""The stage scripts' loops (simclr.py, scan.py, selflabel.py, moco.py, predict.py): prerequisites, resume, small
data, multi-head sums, frozen backbones, weak and strong views, which SCAN head and file they keep, what eval.py
agrees with, and that labels never reach a training loss."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval as eval_script
import moco
import scan
import selflabel
import simclr
from data.dataloaders import train_loader
from losses import ConfidenceBasedCE, SCANLoss, SimCLRLoss
from models import ClusteringModel, ContrastiveModel, build_backbone
from tests.conftest import ROOT, TINY, tiny_args, write_random_pretext_outputs
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, load_config
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
        "weak_strong_agreement": 1.0,  # both views' rows are uniform: all 8 land in the first cluster
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
    with pytest.raises(ConfigError, match="threshold, per_cluster"):  # refused where the config is loaded
        load_config(None, ROOT / "configs/selflabel/selflabel_cifar10.yml", ["pseudo_labels=balanced"])


# Each stage's main() on 20 tiny images (fast tier) ---------------------------------------------------------------
# About a second each: 20 train / 10 test CIFAR images seen at 8×8 by a ResNet-18 of width 2, in one thread, no plots.


def spy(monkeypatch, module, name: str) -> list:
    """Replace `module.name` by a wrapper that calls the original and records (args, kwargs, result) of each call."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def history_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_simclr_main_trains_on_two_train_views_reshuffles_each_epoch_and_runs_the_knn_monitor_when_due(
    tiny_env, monkeypatch
):
    batches, epochs_set, monitors = (
        spy(monkeypatch, simclr, name) for name in ("train_batches", "set_epoch", "knn_monitor")
    )

    overrides = ["epochs=3", "knn_every=2", "topk_neighbors_train=5", "topk_neighbors_val=3", "knn_monitor_k=5"]
    metrics = simclr.main(
        tiny_args(tiny_env, "pretext/simclr_cifar10.yml", *overrides, "augmentation_kwargs.random_resized_crop.size=8")
    )
    assert [kwargs["views"] for _, kwargs, _ in batches] == [("train", "train")]  # SimCLR: two augmented views
    assert [(args[0], args[1]) for args, _, _ in epochs_set] == [(batches[0][2], epoch) for epoch in range(3)]
    assert len(monitors) == 2  # after epochs 2 (knn_every) and 3 (the last)
    pretext = tiny_env.parent / "results/cifar-10/pretext"
    knn = [record["knn_top1"] for record in history_of(pretext)]
    assert knn[0] is None and knn[1] is not None and knn[2] is not None and metrics["knn_top1"] == knn[2]
    checkpoint = torch.load(pretext / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["knn_top1"] == knn[2]
    model = torch.load(pretext / "model.pth.tar", weights_only=True)
    assert model.keys() == checkpoint["model"].keys()
    assert all(torch.equal(value, checkpoint["model"][key]) for key, value in model.items())
    assert np.load(pretext / "topk-train-neighbors.npy").shape == (20, 6)
    assert np.load(pretext / "topk-val-neighbors.npy").shape == (10, 4)
    assert json.loads((pretext / "metrics.json").read_text()) == metrics


def tiny_pretext_outputs(env) -> dict:
    return write_random_pretext_outputs(env, TINY, (20, 6), (10, 4))


def test_scan_main_reshuffles_each_epoch_keeps_the_lowest_loss_head_and_logs_the_accuracy_of_its_pick(
    tiny_env, monkeypatch
):
    from engine.metrics import cluster_metrics

    tiny_pretext_outputs(tiny_env)
    scripted = iter([(1, 0.5), (0, 0.7), (0, 0.5)])  # epoch 2 worse, epoch 3 a tie: no improvement
    picks, real_evaluate = [], scan.scan_evaluate

    def scripted_evaluate(head_outputs):
        scores = real_evaluate(head_outputs)
        scores["lowest_loss_head"], scores["lowest_loss"] = next(scripted)
        chosen = head_outputs[scores["lowest_loss_head"]]
        picks.append(cluster_metrics(chosen["predictions"], chosen["probabilities"], chosen["targets"])["ACC"])
        return scores

    monkeypatch.setattr(scan, "scan_evaluate", scripted_evaluate)
    batches, epochs_set, saved = (
        spy(monkeypatch, scan, name) for name in ("train_batches", "set_epoch", "save_scan_file")
    )
    metrics = scan.main(tiny_args(tiny_env, "scan/scan_cifar10.yml", "epochs=3", "num_heads=2", "num_neighbors=5"))
    assert [(args[0], args[1]) for args, _, _ in epochs_set] == [(batches[0][2], epoch) for epoch in range(3)]
    assert [args[1] for args, _, _ in saved] == [1]  # saved after epoch 1 only
    out = tiny_env.parent / "results/cifar-10/scan"
    history = history_of(out)
    assert [record["head"] for record in history] == [1, 0, 0] and [r["val_loss"] for r in history] == [0.5, 0.7, 0.5]
    assert [record["ACC"] for record in history] == pytest.approx(picks)
    checkpoint = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["best_loss"] == 0.5 and checkpoint["best_loss_head"] == 1
    kept = torch.load(out / "model.pth.tar", weights_only=True)
    assert kept["head"] == 1 and metrics["head"] == 1 and metrics["best_loss"] == 0.5
    assert metrics["num_samples"] == 10 and sum(metrics["cluster_sizes"]) == 10 and "ACC" in metrics


def tiny_scan_file(env, head: int = 1) -> dict:
    """A seeded random two-head SCAN model file whose best head is `head`, and the test neighbours."""
    from engine.model_files import architecture_record, save_scan_file
    from models import build_model
    from utils.config import load_config

    cfg = load_config(env, ROOT / "configs/scan/scan_cifar10.yml", [*TINY, "num_heads=2"])
    torch.manual_seed(1)
    save_scan_file(build_model(cfg).state_dict(), head, cfg["scan_model"], architecture_record(cfg))
    Path(cfg["pretext_dir"]).mkdir(parents=True)
    np.save(cfg["topk_neighbors_val_path"], np.random.default_rng(0).integers(0, 10, size=(10, 4)))
    return torch.load(cfg["scan_model"], weights_only=True)


def test_selflabel_main_takes_targets_from_the_val_view_watches_epoch_zero_and_checkpoints_each_epoch(
    tiny_env, monkeypatch
):
    scan_file = tiny_scan_file(tiny_env)
    names = ("train_batches", "set_epoch", "watch_epoch", "run_model")
    batches, epochs_set, watched, evaluated = (spy(monkeypatch, selflabel, name) for name in names)
    overrides = ["epochs=2", "selflabel_keep=best", "augmentation_kwargs.crop_size=8", "confidence_threshold=0.3"]
    metrics = selflabel.main(tiny_args(tiny_env, "selflabel/selflabel_cifar10.yml", *overrides))
    assert [kwargs["views"] for _, kwargs, _ in batches] == [("val", "train")]  # weak: val transform; strong: train
    assert [(args[0], args[1]) for args, _, _ in epochs_set] == [(batches[0][2], epoch) for epoch in range(2)]
    assert [args[1] for args, _, _ in watched] == [0, 1, 2]  # the SCAN model first, then every epoch
    assert [record["epoch"] for record in metrics["epochs"]] == [0, 1, 2]
    # Epoch 0 evaluates the SCAN model's best head, as head 0.
    first_model = evaluated[0][0][0]
    expected = selflabel.best_head_state_dict(scan_file)
    assert first_model.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in first_model.state_dict().items())
    out = tiny_env.parent / "results/cifar-10/selflabel"
    checkpoint = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["record"]["config"]["selflabel_keep"] == "best"
    kept = torch.load(out / "model.pth.tar", weights_only=True)
    reference = {0: expected, 2: checkpoint["model"]}.get(metrics["kept_epoch"])
    if reference is not None:  # a kept epoch 1 was overwritten in the checkpoint: nothing to compare with
        assert all(torch.equal(value, reference[key]) for key, value in kept.items())


def test_selflabel_with_average_epochs_writes_the_mean_of_the_last_epochs_weights(tiny_env, monkeypatch):
    """average_epochs=2 of 3: the model written (and evaluated) is (epoch 2 + epoch 3) / 2 of the trained weights,
    BatchNorm statistics included; the checkpoint holds the average so far for a resume."""
    tiny_scan_file(tiny_env)
    trained, original = [], selflabel.train_one_epoch

    def train_and_snapshot(loader, model, *args, **kwargs):
        stats = original(loader, model, *args, **kwargs)
        trained.append({key: value.clone() for key, value in model.state_dict().items()})
        return stats

    monkeypatch.setattr(selflabel, "train_one_epoch", train_and_snapshot)
    overrides = ["epochs=3", "average_epochs=2", "augmentation_kwargs.crop_size=8", "confidence_threshold=0.3"]
    metrics = selflabel.main(tiny_args(tiny_env, "selflabel/selflabel_cifar10.yml", *overrides))
    out = tiny_env.parent / "results/cifar-10/selflabel"
    written = torch.load(out / "model.pth.tar", weights_only=True)
    floats = [key for key, value in written.items() if value.is_floating_point()]
    assert any(key.endswith("running_mean") for key in floats) and len(trained) == 3
    for key in floats:
        torch.testing.assert_close(written[key], (trained[1][key] + trained[2][key]) / 2)
    assert not all(torch.equal(written[key], trained[2][key]) for key in floats)  # not the last epoch's weights
    assert metrics["average_epochs"] == 2 and metrics["kept_epoch"] == 3
    checkpoint = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert int(checkpoint["averaged"]["n_averaged"]) == 2
    assert all(torch.equal(checkpoint["model"][key], trained[2][key]) for key in floats)  # training goes on raw


def test_mine_pretext_files_mines_both_splits_and_writes_the_metrics_with_the_extras(tiny_env):
    """The end of moco.py and pretrained.py: neighbours of the train and test split and metrics.json (+ extras)."""
    from engine.pretext import backbone_feature_model, mine_pretext_files
    from utils.config import load_config

    overrides = [*TINY, "topk_neighbors_train=5", "topk_neighbors_val=3"]
    cfg = load_config(tiny_env, ROOT / "configs/pretext/simclr_cifar10.yml", overrides)
    cfg["augmentation_backend"] = "pil"
    torch.manual_seed(0)
    model = backbone_feature_model(ContrastiveModel(build_backbone("resnet18", base_width=2)))
    metrics = mine_pretext_files(model, cfg, CPU, extra={"source": "test weights"})
    pretext = tiny_env.parent / "results/cifar-10/pretext"
    assert metrics["source"] == "test weights"
    assert json.loads((pretext / "metrics.json").read_text()) == metrics
    train, val = np.load(pretext / "topk-train-neighbors.npy"), np.load(pretext / "topk-val-neighbors.npy")
    assert train.shape == (20, 6) and val.shape == (10, 4)
    assert (train[:, 0] == np.arange(20)).all() and (val[:, 0] == np.arange(10)).all()  # each image is its nearest


def test_predict_main_assigns_each_image_the_argmax_cluster_with_its_softmax_confidence(tiny_env, tmp_path):
    import csv

    import predict
    from data.augment import get_val_transformations
    from utils.config import load_config

    scan_file = tiny_scan_file(tiny_env, head=1)
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    output = tmp_path / "predictions.csv"
    config = ROOT / "configs/scan/scan_cifar10.yml"
    model_file = tiny_env.parent / "results/cifar-10/scan/model.pth.tar"
    args = ["--config_env", str(tiny_env), "--config_exp", str(config), "--model", str(model_file)]
    result = predict.main([*args, "--images", str(folder), "--output", str(output), "--set", *TINY, "num_heads=2"])
    assert result["num_images"] == 3 and result["num_failed"] == 0 and sum(result["cluster_sizes"]) == 3

    cfg = load_config(tiny_env, config, [*TINY, "num_heads=2"])
    model = ClusteringModel(build_backbone("resnet18", base_width=2), 10, 2)
    model.load_state_dict(scan_file["model"])
    transform = get_val_transformations(cfg)
    images = torch.stack([transform(Image.open(folder / f"{i}.png").convert("RGB")) for i in range(3)])
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(images)[1], dim=1)  # head 1, the file's best
    rows = list(csv.DictReader(output.open()))
    assert [Path(row["file"]).name for row in rows] == ["0.png", "1.png", "2.png"]
    assert [int(row["cluster"]) for row in rows] == probabilities.argmax(dim=1).tolist()
    assert [float(row["confidence"]) for row in rows] == pytest.approx(
        probabilities.max(dim=1).values.tolist(), abs=2e-3
    )


def test_a_selflabel_epoch_without_batches_reports_zeros_and_empty_counts():
    import selflabel
    from losses import ConfidenceBasedCE
    from utils.runtime import Runtime

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = selflabel.train_one_epoch(
        [], model, ConfidenceBasedCE(0.99, False), optimizer, None, Runtime("cpu"), False, 0
    )
    assert result == {
        "loss": 0.0,
        "steps": 0,
        "skipped": 0,
        "train_cluster_sizes": [],
        "pseudo_labels_per_cluster": [],
        "confident": 0.0,
        "weak_strong_agreement": None,
    }


def test_the_selflabel_log_matches_clusters_to_every_class_even_one_without_test_images(capsys):
    from engine.cluster_watch import SelfLabelWatch

    # Three clusters, three classes, no test image of class 2. Hungarian on the 3×3 counts gives cluster 2 to the
    # empty class: 2 of 3 right. Counting K from the two distinct targets would match by majority instead: 3 of 3.
    head_output = {
        "predictions": torch.tensor([0, 1, 2]),
        "probabilities": torch.eye(3),
        "targets": torch.tensor([0, 1, 1]),
    }
    record = selflabel.watch_epoch(SelfLabelWatch(0.5), 0, head_output, None, CPU, num_classes=3)
    assert record["ACC"] == pytest.approx(2 / 3)
    assert "ACC 66.67" in capsys.readouterr().out


def test_the_scan_epoch_logs_each_term_as_the_mean_over_heads_and_the_total_as_their_sum():
    import scan
    from losses import SCANLoss
    from models import ClusteringModel
    from utils.runtime import Runtime

    torch.manual_seed(0)
    backbone = torch.nn.Flatten()
    backbone.out_dim = 12
    model = ClusteringModel(backbone, num_classes=3, num_heads=3)
    batch = {"anchor": torch.randn(6, 3, 2, 2), "neighbor": torch.randn(6, 3, 2, 2)}
    criterion = SCANLoss(5.0)
    with torch.no_grad():
        per_head = [criterion(a, n) for a, n in zip(model(batch["anchor"]), model(batch["neighbor"]))]
    cfg = {"update_cluster_head_only": False, "amp": False}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    logged = scan.train_one_epoch([batch], model, criterion, optimizer, Runtime("cpu"), cfg, epoch=0)
    assert logged["total"] == pytest.approx(sum(total.item() for total, _, _ in per_head), rel=1e-5)
    assert logged["consistency"] == pytest.approx(sum(c.item() for _, c, _ in per_head) / 3, rel=1e-5)
    assert logged["entropy"] == pytest.approx(sum(e.item() for _, _, e in per_head) / 3, rel=1e-5)


# Weak and strong views -----------------------------------------------------------------------------------------
class LogitsByFirstPixel(torch.nn.Module):
    """A clustering model whose logits for an image are row `image[0, 0, 0]` of a fixed table (one head)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)
        self.shift = torch.nn.Parameter(torch.zeros(1))  # something for the optimizer; softmax ignores it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.table[x[:, 0, 0, 0].long()] + self.shift]


def images_numbered(*numbers: int) -> torch.Tensor:
    return torch.tensor(numbers, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def test_selflabel_takes_targets_from_the_weak_image_and_trains_the_strong_augmented_one():
    # Weak views (images 0, 1) are sure: clusters 0 and 1. Strong views (images 2, 3) are unsure, so with the
    # views swapped no sample would pass the threshold and the batch would be skipped.
    model = LogitsByFirstPixel([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    batch = {"image": images_numbered(0, 1), "image_augmented": images_numbered(2, 3)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = selflabel.train_one_epoch([batch], model, ConfidenceBasedCE(0.99, False), optimizer, None, CPU, False, 0)
    # Cross-entropy of the strong logits [1, 0, 0] toward 0 and [0, 0, 1] toward 1, by hand: both log(e + 2) − …
    expected = ((math.log(math.e + 2) - 1) + math.log(math.e + 2)) / 2
    assert result["steps"] == 1 and result["skipped"] == 0
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["train_cluster_sizes"] == [1, 1, 0]  # counted on the weak view
    assert result["pseudo_labels_per_cluster"] == [1, 1, 0]


def test_simclr_anchors_are_the_first_view_and_the_positives_the_second():
    torch.manual_seed(0)
    images, augmented = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))

    def features(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model(x), dim=1)

    criterion = SimCLRLoss(0.5)
    with torch.no_grad():
        expected = criterion(torch.stack([features(images), features(augmented)], dim=1)).item()
        swapped = criterion(torch.stack([features(augmented), features(images)], dim=1)).item()
    assert abs(expected - swapped) > 1e-3  # the loss tells the two orders apart (anchors are view 0 only)

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.inner(x), dim=1)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = {"image": images, "image_augmented": augmented}
    loss = simclr.train_one_epoch([batch], Normalised(), criterion, optimizer, CPU, False, 0, gather_negatives=False)
    assert loss == pytest.approx(expected, rel=1e-5)


# When the kNN monitor of the pretext stage runs ------------------------------------------------------------------
@pytest.mark.parametrize(
    "knn_every, epochs, expected",
    [
        (10, 25, [10, 20, 25]),  # every 10th epoch, and the last
        (5, 10, [5, 10]),  # the last one is a 5th: once
        (1, 4, [1, 2, 3, 4]),
        (30, 5, [5]),  # a run shorter than knn_every: after the last epoch only
        (3, 1, [1]),
    ],
)
def test_the_knn_monitor_runs_every_knn_every_epochs_and_after_the_last(knn_every, epochs, expected):
    due = [epoch + 1 for epoch in range(epochs) if simclr.knn_monitor_due(epoch, knn_every, epochs)]
    assert due == expected


FAST_32 = ["num_workers=0", "backbone_kwargs.base_width=8", "seed=0", "batch_size=32"]


SCAN_CONFIG = ROOT / "configs/scan/scan_cifar10.yml"


def stage_args(env, config, *overrides) -> list[str]:
    return ["--config_env", str(env), "--config_exp", str(config), "--set", *FAST_32, *overrides]


def write_pretext_outputs(env) -> dict:
    return write_random_pretext_outputs(env, FAST_32, (100, 21), (50, 6))


@pytest.mark.slow
def test_scan_keeps_the_lowest_loss_head_and_replaces_the_model_only_on_improvement(tiny_cifar_env, monkeypatch):
    cfg = write_pretext_outputs(tiny_cifar_env)
    # Scripted head selection: epoch 1 head 1 (0.5), epoch 2 head 2 (0.7, worse), epoch 3 head 0 (0.3), epoch 4
    # head 2 (0.3, a tie is no improvement).
    scripted = iter([(1, 0.5), (2, 0.7), (0, 0.3), (2, 0.3)])
    real_evaluate = scan.scan_evaluate

    def scripted_evaluate(head_outputs):
        scores = real_evaluate(head_outputs)
        scores["lowest_loss_head"], scores["lowest_loss"] = next(scripted)
        return scores

    saved_models = []
    real_save = scan.save_scan_file

    def recording_save(state_dict, head, path, architecture, record):
        if str(path) == cfg["scan_model"]:
            saved_models.append({"head": head, "model": {k: v.clone() for k, v in state_dict.items()}})
        real_save(state_dict, head, path, architecture, record)

    monkeypatch.setattr(scan, "scan_evaluate", scripted_evaluate)
    monkeypatch.setattr(scan, "save_scan_file", recording_save)
    metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=4", "num_heads=3"))

    assert [saved["head"] for saved in saved_models] == [1, 0]
    final = torch.load(cfg["scan_model"], weights_only=True)
    assert final["head"] == 0
    for key, value in saved_models[-1]["model"].items():
        assert torch.equal(final["model"][key], value), key
    checkpoint = torch.load(cfg["scan_checkpoint"], weights_only=True)
    assert checkpoint["best_loss"] == 0.3 and checkpoint["best_loss_head"] == 0
    # The final weights (epoch 4) differ from the kept ones (epoch 3): the kept file is not simply the last.
    assert not torch.equal(checkpoint["model"]["cluster_head.0.weight"], final["model"]["cluster_head.0.weight"])
    assert metrics["head"] == 0 and metrics["best_loss"] == 0.3


@pytest.mark.slow
def test_scan_metrics_equal_eval_on_the_same_model_and_split(tiny_cifar_env, tmp_path):
    cfg = write_pretext_outputs(tiny_cifar_env)
    scan_metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=2", "num_heads=2"))
    saved = json.loads((tmp_path / "results/cifar-10/scan/metrics.json").read_text())
    eval_metrics = eval_script.main(
        [
            "--config_env",
            str(tiny_cifar_env),
            "--config_exp",
            str(SCAN_CONFIG),
            "--model",
            cfg["scan_model"],
            "--output_dir",
            str(tmp_path / "eval"),
            "--set",
            *FAST_32,
            "num_heads=2",
        ]
    )
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    for key in ("ACC", "NMI", "ARI", "AMI", "ACC Top-5", "hungarian_match", "cluster_sizes", "head"):
        assert saved[key] == written[key], key
    assert scan_metrics["ACC"] == eval_metrics["ACC"]


def permute_cifar_labels(root, seed: int) -> None:
    """Rewrite every CIFAR-10 batch with its labels shuffled; the images stay byte for byte the same."""
    rng = np.random.default_rng(seed)
    for path in sorted((root / "datasets/cifar-10/cifar-10-batches-py").glob("*_batch*")):
        with open(path, "rb") as handle:
            batch = pickle.load(handle)
        batch["labels"] = rng.permutation(batch["labels"]).tolist()
        with open(path, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def train_all_stages(env) -> dict[str, dict]:
    simclr.main(stage_args(env, ROOT / "configs/pretext/simclr_cifar10.yml", "epochs=2"))
    scan.main(stage_args(env, SCAN_CONFIG, "epochs=2", "num_heads=2"))
    selflabel.main(
        stage_args(env, ROOT / "configs/selflabel/selflabel_cifar10.yml", "epochs=2", "confidence_threshold=0.1")
    )
    cfg = load_config(env, SCAN_CONFIG, FAST_32)
    return {
        "pretext": torch.load(cfg["pretext_checkpoint"], weights_only=True)["model"],
        "scan": torch.load(cfg["scan_checkpoint"], weights_only=True)["model"],
        "selflabel": torch.load(cfg["selflabel_checkpoint"], weights_only=True)["model"],
        "neighbors": {"train": np.load(cfg["topk_neighbors_train_path"])},
    }


@pytest.mark.slow
def test_labels_never_reach_a_training_loss(tmp_path_factory):
    """The same images with shuffled labels train to bit-identical weights and neighbours in all three stages."""
    from tests.conftest import write_cifar10

    runs = []
    for shuffled in (False, True):
        root = tmp_path_factory.mktemp("labels_shuffled" if shuffled else "labels_true")
        write_cifar10(root / "datasets" / "cifar-10")
        if shuffled:
            permute_cifar_labels(root, seed=1)
        env = root / "env.yml"
        env.write_text(f"root_dir: {root / 'results'}\ndata_root: {root / 'datasets'}\ndownload: false\n")
        runs.append(train_all_stages(env))
    true_labels, shuffled_labels = runs
    assert np.array_equal(true_labels["neighbors"]["train"], shuffled_labels["neighbors"]["train"])
    for stage in ("pretext", "scan", "selflabel"):
        for key, value in true_labels[stage].items():
            assert torch.equal(value, shuffled_labels[stage][key]), f"{stage}: {key}"


@pytest.mark.slow
def test_zero_epochs_writes_the_untrained_heads_as_simclr_writes_its_model(tiny_cifar_env, tmp_path):
    """`--set epochs=0` is a baseline (SCAN heads untrained on the pretext backbone), not a missing file."""
    cfg = write_pretext_outputs(tiny_cifar_env)
    metrics = scan.main(stage_args(tiny_cifar_env, SCAN_CONFIG, "epochs=0", "num_heads=2"))
    saved = torch.load(cfg["scan_model"], weights_only=True)
    assert saved["head"] in (0, 1) and metrics["head"] == saved["head"] and np.isfinite(metrics["best_loss"])
    pretext = torch.load(cfg["pretext_model"], weights_only=True)
    assert torch.equal(saved["model"]["backbone.conv1.weight"], pretext["backbone.conv1.weight"])  # untrained
    config = ROOT / "configs/selflabel/selflabel_cifar10.yml"
    selflabel_metrics = selflabel.main(stage_args(tiny_cifar_env, config, "epochs=0"))
    kept = torch.load(tmp_path / "results/cifar-10/selflabel/model.pth.tar", weights_only=True)
    head = saved["head"]
    assert torch.equal(kept["cluster_head.0.weight"], saved["model"][f"cluster_head.{head}.weight"])
    assert selflabel_metrics["kept_epoch"] == 0
