"""Behaviours the stages rely on that only an end-to-end run would otherwise touch, each checked in a second or
less against a hand-computed or counted expectation (issue "The five-minute suite still catches silent breakage").

Which view is weak and which strong, the order of results gathered from several processes, what the checkpoint
fingerprint covers, which self-labeling epochs may be kept, when the kNN monitor runs, Cutout on every image, and
non-finite weights never reaching a file.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

import selflabel
import simclr
from data import batch_augment as ba
from engine.cluster_watch import SelfLabelWatch
from losses import ConfidenceBasedCE, SimCLRLoss
from utils import distributed
from utils.checkpoint import NonFiniteError, config_fingerprint, non_finite_tensors, save_atomic
from utils.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"))


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


# Results gathered from several processes -----------------------------------------------------------------------
class ThreadedProcessGroup:
    """torch.distributed's calls that utils/distributed.py makes, for `world_size` threads of one process.

    Each thread is one rank; a collective hands every rank the list of what each rank sent, in rank order, as a
    real all_gather does. A rank that stops early (an exception) makes the others fail with BrokenBarrierError
    after `timeout` seconds instead of hanging.
    """

    def __init__(self, world_size: int, timeout: float = 10.0) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=timeout)
        self.slots: list = [None] * world_size
        self.local = threading.local()

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.local.rank

    def get_backend(self) -> str:
        return "gloo"

    def _exchange(self, value) -> list:
        self.slots[self.get_rank()] = value
        self.barrier.wait()
        everyone = list(self.slots)
        self.barrier.wait()  # no rank overwrites its slot before every rank has read them all
        return everyone

    def all_gather(self, received: list[torch.Tensor], sent: torch.Tensor) -> None:
        for out, value in zip(received, self._exchange(sent.clone())):
            out.copy_(value)  # fails on a shape mismatch, as the real collective does

    def all_gather_object(self, received: list, value) -> None:
        received[:] = self._exchange(value)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        tensor.copy_(self._exchange(tensor.clone())[src])

    def run(self, work) -> list:
        """work(rank) in one thread per rank; every rank's result (or the exception it raised), in rank order."""
        results: list = [None] * self.world_size

        def target(rank: int) -> None:
            self.local.rank = rank
            try:
                results[rank] = work(rank)
            except Exception as error:  # noqa: BLE001 - handed back to the test
                results[rank] = error

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


def rows_of(indices: list[int]) -> dict[str, torch.Tensor]:
    """What a process computed for these dataset items: features [i, 10 i, 100 i] and prediction i mod 3."""
    index = torch.tensor(indices, dtype=torch.long)
    return {"features": index[:, None].float() * torch.tensor([1.0, 10.0, 100.0]), "predictions": index % 3}


def test_shuffled_uneven_shards_are_gathered_in_dataset_order_on_every_process(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    monkeypatch.setattr(distributed, "ELEMENTS_PER_GATHER", 6)  # two feature rows a message: several rounds
    shards = [[6, 1, 3], [], [0, 7, 2, 5, 4]]  # rank 1 evaluated nothing

    def work(rank: int) -> dict:
        indices = torch.tensor(shards[rank], dtype=torch.long)
        return distributed.gather_in_order(rows_of(shards[rank]) if shards[rank] else {}, indices)

    expected = rows_of(list(range(8)))
    for gathered in group.run(work):
        assert not isinstance(gathered, Exception), gathered
        assert torch.equal(gathered["features"], expected["features"])
        assert torch.equal(gathered["predictions"], expected["predictions"])
        assert gathered["predictions"].dtype == torch.long


def test_shards_that_overlap_or_leave_a_gap_are_refused(monkeypatch):
    group = ThreadedProcessGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    shards = [[0, 1, 2], [2, 3]]  # item 2 twice, item 4 never

    def work(rank: int) -> dict:
        return distributed.gather_in_order(rows_of(shards[rank]), torch.tensor(shards[rank]))

    for outcome in group.run(work):
        assert isinstance(outcome, RuntimeError) and "exactly once" in str(outcome)


def test_only_rank_0_is_the_main_process(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    assert group.run(lambda rank: distributed.is_main_process()) == [True, False, False]


def test_every_process_evaluates_the_main_process_parameters_and_batchnorm_statistics(monkeypatch):
    group = ThreadedProcessGroup(3)
    monkeypatch.setattr(distributed, "dist", group)
    models = []
    for rank in range(3):  # DDP keeps parameters equal; BatchNorm statistics drift apart per process
        torch.manual_seed(rank)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        model[1].running_mean.normal_()
        models.append(model.to(memory_format=torch.contiguous_format))
    main = {key: value.clone() for key, value in models[0].state_dict().items()}
    group.run(lambda rank: distributed.broadcast_from_main(models[rank]))
    for model in models:
        assert all(torch.equal(value, main[key]) for key, value in model.state_dict().items())


def test_a_sharded_evaluation_without_dataset_indices_is_refused(monkeypatch):
    group = ThreadedProcessGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    outcomes = group.run(lambda rank: distributed.gather_in_order(rows_of([rank]), None))
    assert all(isinstance(outcome, ValueError) and "'index'" in str(outcome) for outcome in outcomes)


# What the checkpoint fingerprint covers ------------------------------------------------------------------------
def scan_config() -> dict:
    """A SCAN config as load_config returns it (experiment keys, plus paths and machine settings)."""
    return {
        "setup": "scan",
        "backbone": "resnet18",
        "backbone_kwargs": {"base_width": 64},
        "model_kwargs": {"head": "mlp", "features_dim": 128},
        "num_classes": 10,
        "num_heads": 1,
        "train_db_name": "cifar-10",
        "val_db_name": "cifar-10",
        "train_split": "train",
        "dataset_kwargs": {"image_size": 32},
        "criterion": "scan",
        "criterion_kwargs": {"entropy_weight": 5.0},
        "epochs": 50,
        "optimizer": "adam",
        "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 1e-4},
        "scheduler": "constant",
        "batch_size": 128,
        "num_workers": 8,
        "augmentation_strategy": "ours",
        "augmentation_kwargs": {"crop_size": 32, "num_strong_augs": 4, "random_resized_crop": {"size": 32}},
        "transformation_kwargs": {"crop_size": 32},
        "seed": 0,
        "amp": "auto",
        "resume": True,
        "tensorboard": False,
        "topk_neighbors_train": 20,
        "topk_neighbors_val": 5,
        "knn_monitor_k": 100,
        "knn_every": 10,
        "num_neighbors": 20,
        "update_cluster_head_only": False,
        "head_input": "images",
        "save_features": False,
        "scan_dir": "/results/cifar-10/scan",  # a path: not part of the experiment
    }


def changed(cfg: dict, dotted: str, value) -> dict:
    """A deep copy of `cfg` with the (possibly nested, possibly new) key `dotted` set to `value`."""
    import copy

    cfg = copy.deepcopy(cfg)
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


# Each decides which model is built, which images it sees, or which parameters the optimizer holds.
MODEL_OR_DATA_CHANGES = [
    ("setup", "selflabel"),
    ("backbone", "resnet50"),
    ("backbone_kwargs.base_width", 8),
    ("backbone_kwargs.stem", "stl"),
    ("model_kwargs.features_dim", 64),
    ("num_classes", 20),
    ("num_heads", 5),
    ("train_db_name", "stl-10"),
    ("val_db_name", "stl-10"),
    ("train_split", "train+unlabeled"),
    ("dataset_kwargs.image_size", 16),
    ("augmentation_strategy", "simclr"),
    ("augmentation_kwargs.crop_size", 28),
    ("augmentation_kwargs.random_resized_crop.size", 28),
    ("transformation_kwargs.crop_size", 28),
    ("num_neighbors", 5),
    ("update_cluster_head_only", True),
    ("head_input", "cached_features"),
    ("optimizer", "sgd"),
]
# How long, how fast, how often to log, where to write: the same model on the same data.
FREE_CHANGES = [
    ("epochs", 100),
    ("knn_every", 1),
    ("knn_monitor_k", 20),
    ("resume", False),
    ("tensorboard", True),
    ("topk_neighbors_train", 50),
    ("save_features", True),
    ("batch_size", 64),
    ("num_workers", 0),
    ("seed", 1),
    ("amp", True),
    ("optimizer_kwargs.lr", 0.5),
    ("augmentation_kwargs.num_strong_augs", 2),
    ("criterion_kwargs.entropy_weight", 2.0),
    ("scan_dir", "/elsewhere"),
]


@pytest.mark.parametrize("key, value", MODEL_OR_DATA_CHANGES)
def test_each_model_or_data_key_alone_changes_the_fingerprint(key, value):
    assert config_fingerprint(changed(scan_config(), key, value)) != config_fingerprint(scan_config())


@pytest.mark.parametrize("key, value", FREE_CHANGES)
def test_a_key_outside_the_model_and_data_leaves_the_fingerprint(key, value):
    assert config_fingerprint(changed(scan_config(), key, value)) == config_fingerprint(scan_config())


def test_the_fingerprint_does_not_depend_on_the_order_of_keys():
    cfg = scan_config()
    reordered = dict(reversed(list(cfg.items())))
    cfg["backbone_kwargs"] = {"base_width": 64, "stem": "cifar"}
    reordered["backbone_kwargs"] = {"stem": "cifar", "base_width": 64}  # nested keys in the other order too
    assert config_fingerprint(reordered) == config_fingerprint(cfg)
    assert len(config_fingerprint(cfg)) == 16 and int(config_fingerprint(cfg), 16) >= 0  # 16 hex digits


# Which self-labeling epochs may be kept --------------------------------------------------------------------------
# Eight test images in two groups of four; each image's neighbours are itself and the other three of its group.
GROUPS = torch.tensor([[i] + [j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i] for i in range(8)])


def assignments(predictions: list[int]) -> dict:
    predictions = torch.tensor(predictions)
    probabilities = F.one_hot(predictions, 2).float() * 0.9 + 0.05
    return {"predictions": predictions, "probabilities": probabilities}


def test_an_epoch_with_an_emptied_or_shrunken_cluster_is_never_kept_whatever_its_score():
    watch = SelfLabelWatch(warning_fraction=0.5)
    # Epoch 0 (the SCAN model): sizes [4, 4], each image agrees with 1 of its 3 neighbours: log 3 − log 2.
    scan = watch.observe(0, assignments([0, 1, 0, 1, 0, 1, 0, 1]), GROUPS, {})
    assert scan["score"] == pytest.approx(math.log(3) - math.log(2), rel=1e-6) and watch.best_epoch == 0
    # Epoch 1: cluster 0 keeps 1 of its 4 images (below half); 18 of 24 pairs agree, sizes 1/8, 7/8.
    shrunk = watch.observe(1, assignments([1, 1, 1, 1, 1, 1, 1, 0]), GROUPS, {})
    size_entropy = -(1 / 8 * math.log(1 / 8) + 7 / 8 * math.log(7 / 8))
    assert shrunk["score"] == pytest.approx(-math.log(18 / 24) - size_entropy, rel=1e-6)
    assert shrunk["score"] < scan["score"] and not shrunk["improved"] and shrunk["warnings"][0]["kind"] == "shrunk"
    # Epoch 2: everything in cluster 1; every pair agrees, score 0, below the SCAN model's, but cluster 0 emptied.
    emptied = watch.observe(2, assignments([1] * 8), GROUPS, {})
    assert emptied["score"] == pytest.approx(0.0, abs=1e-6) and emptied["score"] < scan["score"]
    assert not emptied["improved"] and emptied["warnings"][0]["kind"] == "emptied" and watch.best_epoch == 0
    # Epoch 3: the groups become the clusters, all intact: score −log 2, kept.
    intact = watch.observe(3, assignments([0, 0, 0, 0, 1, 1, 1, 1]), GROUPS, {})
    assert intact["score"] == pytest.approx(-math.log(2), rel=1e-6)
    assert intact["improved"] and watch.best_epoch == 3
    # Epoch 4: intact again, with the same score: the later intact epoch is the kept one.
    again = watch.observe(4, assignments([1, 1, 1, 1, 0, 0, 0, 0]), GROUPS, {})
    assert again["score"] == pytest.approx(intact["score"]) and again["improved"] and watch.best_epoch == 4


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


# Cutout on every strong view -----------------------------------------------------------------------------------
def test_cutout_zeroes_one_square_on_every_image_with_the_expected_mean_area():
    torch.manual_seed(0)
    n, size, length = 4000, 32, 8
    out = ba.cutout(torch.ones(n, 3, size, size), n_holes=1, length=length, random_size=False)
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(dim=1))  # the same hole in every channel
    rows, cols = zero.any(dim=2).sum(dim=1), zero.any(dim=1).sum(dim=1)
    area = zero.sum(dim=(1, 2))
    assert torch.equal(area, rows * cols)  # one rectangle per image: a square clipped at the border
    assert int(area.min()) >= (length // 2) ** 2 and int(area.max()) == length**2  # never skipped, never larger
    # Rows covered for a centre y uniform in 0..31 and half-side 4: min(y + 4, 32) − max(y − 4, 0), which averages
    # (22 + 25 · 8 + 18) / 32 = 7.5; rows and columns are independent, so the mean area is 7.5² = 56.25.
    assert float(area.float().mean()) == pytest.approx(56.25, abs=0.6)
    assert len({tuple(mask.flatten().tolist()) for mask in zero[:200]}) > 150  # each image draws its own place


def test_cutout_with_a_random_side_draws_it_uniformly_from_one_to_length():
    torch.manual_seed(0)
    n, length = 4000, 4
    out = ba.cutout(torch.ones(n, 1, 64, 64), n_holes=1, length=length, random_size=True)
    width = (out[:, 0] == 0).any(dim=1).sum(dim=1)
    # A side s spans s//2 columns each side of the centre: side 1 no hole, sides 2 and 3 two columns, side 4 four
    # (three or two only when its centre is in the first or last column, 2 of 64 places).
    shares = {"no hole": 1 / 4, "side 2 or 3": 2 / 4, "side 4": 1 / 4}
    counts = {
        "no hole": int((width == 0).sum()),
        "side 2 or 3": int((width == 2).sum()),
        "side 4": int((width > 2).sum()),
    }
    assert sum(counts.values()) >= n - 0.02 * n  # the rest: a side 4 at the border
    for name, share in shares.items():
        assert abs(counts[name] / n - share) <= 4 * math.sqrt(share * (1 - share) / n), counts


# Non-finite weights never saved --------------------------------------------------------------------------------
def test_non_finite_tensors_are_found_anywhere_in_a_checkpoint_and_integers_are_ignored():
    checkpoint = {
        "model": {"w": torch.ones(2), "b": torch.tensor([0.0, float("inf")])},
        "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}},
        "heads": [torch.zeros(1), torch.tensor([-float("inf")], dtype=torch.bfloat16)],
        "step": torch.tensor([3], dtype=torch.long),
        "epoch": 4,
    }
    assert non_finite_tensors(checkpoint) == ["model.b.", "optimizer.state.0.exp_avg.", "heads.1."]
    assert non_finite_tensors(torch.tensor(float("nan"))) == ["tensor"]
    assert non_finite_tensors({"model": {"w": torch.ones(2)}, "step": 3}) == []


def test_a_checkpoint_with_a_non_finite_optimizer_state_is_not_written(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    with pytest.raises(NonFiniteError, match="exp_avg"):
        save_atomic({"model": {"w": torch.ones(2)}, "optimizer": {"exp_avg": torch.tensor([float("nan")])}}, path)
    assert list(tmp_path.iterdir()) == []
