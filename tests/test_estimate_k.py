"""Choosing the number of clusters: the label-free criteria on countable cases, and estimate_k.py on features
whose number of groups is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import estimate_k
from data.cached_features import save_split_features
from engine.cluster_criteria import chance_agreement, kappa, neighbour_agreement
from engine.cluster_number import recommend, size_balance, stability, used_clusters
from engine.knn import mine_nearest_neighbors
from tests.conftest import ROOT


def test_stability_is_one_for_relabelled_runs_and_lower_when_runs_disagree():
    run = np.array([0, 0, 1, 1, 2, 2])
    relabelled = np.array([2, 2, 0, 0, 1, 1])  # the same clusters under other ids
    mean, std, pairwise = stability([run, relabelled, run])
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0) and len(pairwise) == 3
    disagreeing = np.array([0, 1, 0, 1, 2, 2])
    assert stability([run, disagreeing])[0] < 0.5
    with pytest.raises(ValueError, match="at least two runs"):
        stability([run])


def test_neighbour_agreement_kappa_and_balance_counted_by_hand():
    assignment = np.array([0, 0, 0, 1])
    # Each row: itself, then two neighbours. Agreeing pairs: row 0 (0,0) ✓✓, row 1 (0,1) ✓✗, row 2 ✓✓, row 3 ✗✗.
    neighbors = np.array([[0, 1, 2], [1, 0, 3], [2, 0, 1], [3, 0, 1]])
    assert neighbour_agreement(assignment, neighbors) == pytest.approx(5 / 8)
    assert chance_agreement(assignment, 2) == pytest.approx(0.75**2 + 0.25**2)
    chance = 0.625
    assert kappa(assignment, neighbors, 2) == pytest.approx((5 / 8 - chance) / (1 - chance))
    assert size_balance(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    assert size_balance(np.array([0, 0, 0, 1]), 2) == pytest.approx(
        -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(2)
    )
    # 100 images in K=4: an equal share is 25, so a cluster counts as used from 5 images (20 % of it).
    assert used_clusters(np.array([0] * 60 + [1] * 34 + [2] * 5 + [3] * 1), 4) == 3


def test_recommendation_takes_the_most_stable_k_with_a_confidence_from_the_gap():
    def row(k, mean, std, pairs=10):
        return {"k": k, "stability": mean, "stability_std": std, "pairwise_ari": [mean] * pairs}

    rows = [row(3, 0.60, 0.05), row(4, 0.95, 0.02), row(5, 0.70, 0.10)]
    result = recommend(rows)
    # Gap to K=5: 0.25 / hypot(0.02/√10, 0.10/√10) = 7.75 standard errors; to K=3 more.
    assert result["k"] == 4 and result["confidence"] == "high" and result["closest_k"] == 5
    assert result["gap"] == pytest.approx(0.25 / np.hypot(0.02, 0.10) * np.sqrt(10))
    rows[2] = row(5, 0.90, 0.10)  # 0.05 / 0.0322 = 1.55 standard errors
    assert recommend(rows)["confidence"] == "medium"
    rows[2] = row(5, 0.94, 0.10)
    low = recommend(rows)
    assert low["k"] == 4 and low["confidence"] == "low" and "K=5" in low["reason"]
    # Two perfectly stable K's are tied, not infinitely apart.
    assert recommend([row(2, 1.0, 0.0), row(4, 1.0, 0.0)])["confidence"] == "low"


def write_blob_features(pretext_dir, groups: int, per_group: int, seed: int = 0) -> None:
    """Cached features of `groups` well-separated Gaussian blobs, with neighbours mined as the pretext stage does."""
    rng = np.random.default_rng(seed)
    cfg = {"pretext_dir": str(pretext_dir), "backbone": "resnet18", "backbone_kwargs": {"base_width": 16}}
    for split, count in (("train", per_group), ("val", per_group // 4)):
        targets = np.repeat(np.arange(groups), count)
        centres = 6.0 * np.eye(16)[:groups]
        features = (centres[targets] + rng.normal(0, 1, size=(len(targets), 16))).astype(np.float32)
        save_split_features(cfg, split, features, targets, [f"blob{g}" for g in range(groups)])
        normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
        indices, _ = mine_nearest_neighbors(normalised, targets, 10)
        np.save(pretext_dir / f"topk-{split}-neighbors.npy", indices)


@pytest.mark.slow
def test_estimate_k_recommends_the_number_of_blobs(tmp_path):
    """Three equally far blobs: the only K every seed agrees on is 3."""
    pretext = tmp_path / "results/digits/pretext"
    pretext.mkdir(parents=True)
    write_blob_features(pretext, groups=3, per_group=60)
    result = estimate_k.main(
        [
            "--config_exp",
            str(ROOT / "configs/scan/scan_digits_features.yml"),
            "--k",
            "2",
            "3",
            "6",
            "--seeds",
            "0",
            "1",
            "2",
            "--set",
            f"root_dir={tmp_path / 'results'}",
            "epochs=100",
            "batch_size=60",
        ]
    )
    # Two clusters must cut a blob in half and six must halve every blob, each seed somewhere else.
    assert result["recommendation"]["k"] == 3
    rows = {row["k"]: row for row in result["rows"]}
    assert rows[3]["stability"] > 0.85 and rows[3]["ACC"] > 0.9  # the blobs themselves, in every seed
    assert rows[2]["stability"] < 0.8 and rows[6]["stability"] < 0.8
    saved = json.loads((tmp_path / "results/digits/estimate_k/estimate_k.json").read_text())
    assert saved["recommendation"] == result["recommendation"]
    assert "Recommended K = 3" in (tmp_path / "results/digits/estimate_k/estimate_k.md").read_text()


def test_estimate_k_needs_two_seeds(capsys):
    with pytest.raises(SystemExit):
        estimate_k.main(["--config_exp", "x.yml", "--k", "2", "3", "--seeds", "0"])
    assert "at least two seeds" in capsys.readouterr().err


def blob_splits(tmp_path, groups: int = 3, per_group: int = 30) -> tuple[dict, object, object]:
    """The config, train and val split of `write_blob_features`, as estimate_k.main reads them."""
    from data.cached_features import load_cached_split
    from utils.config import load_config

    pretext = tmp_path / "results/digits/pretext"
    pretext.mkdir(parents=True)
    write_blob_features(pretext, groups=groups, per_group=per_group)
    overrides = [f"root_dir={tmp_path / 'results'}", "epochs=3", "batch_size=30", "num_heads=2"]
    cfg = load_config(ROOT / "configs/env.yml", ROOT / "configs/scan/scan_digits_features.yml", overrides)
    return cfg, load_cached_split(cfg, "train", "", cfg["num_neighbors"]), load_cached_split(cfg, "val", "")


def test_train_heads_repeats_scans_head_only_loop_on_the_cached_features(tmp_path, one_torch_thread):
    """estimate_k's training is scan.py's epoch on cached features: same seed, same weights, bit for bit; its
    criterion has the config's entropy weight, without the target prior (which cannot follow K)."""
    import scan
    from data.cached_features import CachedPairLoader
    from losses import SCANLoss
    from models import ClusteringModel
    from utils.optim import adjust_learning_rate, build_optimizer
    from utils.runtime import Runtime, seed_everything

    cfg, train, _ = blob_splits(tmp_path)
    cfg["criterion_kwargs"] = {"entropy_weight": 2.0, "target_prior": [1.0] * cfg["num_classes"]}
    trained = estimate_k.train_heads(train, 4, cfg, seed=5, device="cpu")

    seed_everything(5)
    identity = torch.nn.Identity()
    identity.out_dim = 16
    expected = ClusteringModel(identity, 4, 2)
    optimizer = build_optimizer({**cfg, "update_cluster_head_only": True}, expected)
    loader = CachedPairLoader(train, cfg["batch_size"], "cpu")
    scan_cfg = {"update_cluster_head_only": True, "head_input": "cached_features", "amp": False}
    for epoch in range(3):
        adjust_learning_rate(cfg, optimizer, epoch)
        scan.train_one_epoch(loader, expected, SCANLoss(2.0), optimizer, Runtime("cpu"), scan_cfg, epoch)
    for key, value in expected.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value), key
    assert trained.training  # left in training mode, as built


def test_the_reference_accuracy_matches_clusters_to_every_class_even_one_without_test_images():
    """Three clusters, three classes, no test image of class 2: Hungarian on the 3×3 counts gives cluster 2 to the
    empty class (2 of 3 right); counting K from the two distinct targets would match by majority (3 of 3)."""
    from data.cached_features import CachedSplit
    from models import ClusteringModel

    identity = torch.nn.Identity()
    identity.out_dim = 3
    model = ClusteringModel(identity, 3, 1)
    with torch.no_grad():  # logits = features: one-hot features put image i in cluster i
        model.cluster_head[0].weight.copy_(torch.eye(3))
        model.cluster_head[0].bias.zero_()
    features, neighbors = torch.eye(3), torch.tensor([[0, 1], [1, 2], [2, 0]])
    split = CachedSplit(features, torch.tensor([0, 1, 1]), neighbors, ["a", "b", "c"])
    run = estimate_k.score_run(model, split, split, 3, "cpu")
    assert run["ACC"] == pytest.approx(2 / 3)


def test_estimate_k_main_on_three_blobs_recommends_three_and_writes_its_table(tmp_path, one_torch_thread):
    """A short run of the whole script (seconds): K=3 splits the blobs alike in both seeds, K=2 cannot."""
    pretext = tmp_path / "results/digits/pretext"
    pretext.mkdir(parents=True)
    write_blob_features(pretext, groups=3, per_group=40)
    args = ["--config_exp", str(ROOT / "configs/scan/scan_digits_features.yml"), "--k", "3", "2", "--seeds", "0", "1"]
    overrides = [f"root_dir={tmp_path / 'results'}", "epochs=20", "batch_size=40", "optimizer_kwargs.lr=0.01"]
    result = estimate_k.main([*args, "--set", *overrides])
    rows = {row["k"]: row for row in result["rows"]}
    assert [row["k"] for row in result["rows"]] == [2, 3] and result["seeds"] == [0, 1]
    assert result["recommendation"]["k"] == 3
    assert rows[3]["stability"] == pytest.approx(1.0) and rows[3]["ACC"] == pytest.approx(1.0)
    assert rows[3]["used"] == 3 and rows[2]["used"] == 2 and rows[2]["ACC"] < 0.7
    # Confident and neighbour-consistent on 3 equal blobs: SCAN loss (entropy weight 1) near 0 − log 3, over log 3.
    assert -1.0 < rows[3]["scan_loss_per_log_k"] < -0.8
    out = tmp_path / "results/digits/estimate_k"
    assert json.loads((out / "estimate_k.json").read_text())["rows"][1]["k"] == 3
    assert "Recommended K = 3" in (out / "estimate_k.md").read_text()


def estimate_k_run(assignment: list[int], agreement: float, with_labels: bool) -> dict:
    run = {"assignment": np.array(assignment), "agreement": agreement, "kappa": 0.5, "balance": 1.0, "used": 2}
    run["scan_loss_per_log_k"] = -1.0
    return run | ({"ACC": agreement, "NMI": 0.1, "ARI": 0.2} if with_labels else {})


def test_estimate_k_averages_every_criterion_over_the_seeds_and_measures_their_stability():
    import estimate_k

    runs = [estimate_k_run([0, 0, 1, 1], 0.8, True), estimate_k_run([1, 1, 0, 0], 0.6, True)]
    row = estimate_k.summarize_k(2, runs)
    assert row["k"] == 2 and row["stability"] == pytest.approx(1.0) and row["stability_std"] == 0.0
    assert row["agreement"] == pytest.approx(0.7) and row["ACC"] == pytest.approx(0.7) and row["used"] == 2
    unlabelled = estimate_k.summarize_k(2, [estimate_k_run([0, 1, 0, 1], 0.5, False)] * 2)
    assert "ACC" not in unlabelled and unlabelled["agreement"] == 0.5


def test_estimate_k_table_marks_the_recommended_k_and_has_a_column_per_cell():
    import estimate_k

    rows = [estimate_k.summarize_k(k, [estimate_k_run([0, 0, 1, 1], 0.8, True)] * 2) | {"k": k} for k in (2, 3)]
    table = estimate_k.format_table(rows, {"k": 3, "confidence": "high", "reason": "most stable"})
    lines = table.splitlines()
    assert lines[1] == "|---" * 10 + "|"  # K, six criteria, three label metrics
    assert lines[2].startswith("| 2 |") and lines[3].startswith("| 3 ← |")
    assert all(line.count("|") == 11 for line in lines[:4])
    assert "Recommended K = 3 (confidence: high)" in table


def test_estimate_k_accepts_k_two_and_two_seeds_and_refuses_less():
    import estimate_k

    args = estimate_k.parse_args(["--config_exp", "x.yml", "--k", "2", "3"])
    assert args.k == [2, 3] and args.seeds == [0, 1, 2, 3, 4]
    assert estimate_k.parse_args(["--config_exp", "x.yml", "--k", "2", "--seeds", "7", "8"]).seeds == [7, 8]
    for bad in (["--k", "1", "3"], ["--k", "2", "--seeds", "0"]):
        with pytest.raises(SystemExit):
            estimate_k.parse_args(["--config_exp", "x.yml", *bad])
