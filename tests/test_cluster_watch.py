"""engine/cluster_watch.py: cluster warnings, the label-free score, and which self-label epoch is kept (hand-counted
cases)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.cluster_criteria import assignment_scan_loss, neighbour_agreement
from engine.cluster_watch import SelfLabelWatch, shrunken_clusters


def test_emptied_and_shrunken_clusters_are_found():
    after_scan = [40, 40, 40, 0]
    assert shrunken_clusters([40, 9, 0, 3], after_scan, 0.25) == [
        {"cluster": 1, "size": 9, "size_after_scan": 40, "kind": "shrunk"},  # 9 < 0.25 · 40
        {"cluster": 2, "size": 0, "size_after_scan": 40, "kind": "emptied"},
    ]  # cluster 3 was empty after SCAN already: nothing to report
    assert shrunken_clusters([40, 10, 50, 0], after_scan, 0.25) == []  # 10 is not below 10


def test_selection_score_is_the_scan_loss_of_the_assignments():
    # Clusters [0, 0, 1]; 2 of the 6 (image, neighbour) pairs agree; sizes 2/3, 1/3.
    predictions, neighbors = torch.tensor([0, 0, 1]), torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    size_entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    criterion = assignment_scan_loss(predictions, neighbors, num_clusters=3)  # cluster 2 empty: adds 0
    assert criterion["score"] == pytest.approx(-math.log(2 / 6) - size_entropy, rel=1e-6)
    assert criterion["size_entropy"] == pytest.approx(size_entropy, rel=1e-6)


def test_neighbour_agreement_counts_pairs_without_the_image_itself():
    predictions = torch.tensor([0, 0, 1])
    neighbors = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0]])  # 6 pairs, 2 agree (0–1 and 1–0)
    assert neighbour_agreement(predictions, neighbors) == pytest.approx(2 / 6)


def head_output(predictions: list[int], confidence: float = 0.9) -> dict:
    """Two clusters; cluster c's samples get probability `confidence` on c."""
    predictions = torch.tensor(predictions)
    probabilities = torch.full((len(predictions), 2), 1 - confidence)
    probabilities[torch.arange(len(predictions)), predictions] = confidence
    return {"predictions": predictions, "probabilities": probabilities, "targets": torch.zeros_like(predictions)}


# Eight images in two groups of four; each image's neighbours are itself and the rest of its group.
GROUPS = torch.tensor([[i] + [j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i] for i in range(8)])


def test_the_best_epoch_with_all_clusters_intact_is_kept_and_the_state_survives_a_resume():
    watch = SelfLabelWatch(warning_fraction=0.5)
    start = watch.observe(0, head_output([0, 0, 0, 1, 1, 1, 1, 1]), GROUPS, {})  # the SCAN model
    assert start["improved"] and watch.best_epoch == 0 and start["cluster_sizes"] == [3, 5]
    better = watch.observe(1, head_output([0, 0, 0, 0, 1, 1, 1, 1], 0.99), GROUPS, {"ACC": 1.0})
    assert better["improved"] and better["score"] < start["score"] and better["ACC"] == 1.0
    # Epoch 2 puts everything in cluster 1: its consistency is perfect, but cluster 0 emptied.
    collapsed = watch.observe(2, head_output([1] * 8, 0.99), GROUPS, {})
    assert not collapsed["improved"] and collapsed["warnings"][0]["kind"] == "emptied"
    assert watch.best_epoch == 1 and "epoch 1 has the lowest assignment SCAN loss" in watch.kept_reason()
    assert watch.all_warnings() == [{"epoch": 2, "cluster": 0, "size": 0, "size_after_scan": 3, "kind": "emptied"}]
    assert any("cluster 0 emptied" in line for line in watch.warning_lines(collapsed))

    resumed = SelfLabelWatch(0.5, watch.state_dict())
    assert resumed.best_epoch == 1 and resumed.best_score == watch.best_score
    worse = resumed.observe(3, head_output([0, 0, 0, 0, 1, 1, 1, 1], 0.9), GROUPS, {})
    assert not worse["improved"] and resumed.best_epoch == 1 and len(resumed.history) == 4


def test_the_scan_head_is_kept_when_no_epoch_beats_it():
    watch = SelfLabelWatch(warning_fraction=0.25)
    watch.observe(0, head_output([0, 0, 0, 0, 1, 1, 1, 1], 0.99), GROUPS, {})
    watch.observe(1, head_output([0, 1, 0, 1, 0, 1, 0, 1], 0.99), GROUPS, {})  # balanced but inconsistent
    assert watch.best_epoch == 0 and "kept the SCAN head (epoch 0)" in watch.kept_reason()


def test_without_neighbours_epochs_are_watched_but_not_scored():
    watch = SelfLabelWatch(warning_fraction=0.25)
    watch.observe(0, head_output([0, 1]), None, {})
    record = watch.observe(1, head_output([1, 1]), None, {})
    assert record["score"] is None and not record["improved"] and record["warnings"][0]["kind"] == "emptied"


def test_one_neighbour_agreement_for_the_watch_and_the_choice_of_k():
    """Tensors (the watch) and arrays (estimate_k) give the same exact share; a self pair outside column 0 (a
    duplicate image mined before the image itself) is skipped wherever it stands."""
    import numpy as np

    assignment = [0, 0, 1, 1]
    neighbors = [[1, 0, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]]  # row 0 holds itself in column 1
    # Pairs left: (0,1) ✓ (0,2) ✗ (1,0) ✓ (1,3) ✗ (2,3) ✓ (2,0) ✗ (3,2) ✓ (3,1) ✗ → 4 of 8, not 5 of 9.
    assert neighbour_agreement(torch.tensor(assignment), torch.tensor(neighbors)) == 0.5
    assert neighbour_agreement(np.array(assignment), np.array(neighbors)) == 0.5


def test_the_kept_reason_quotes_the_scan_models_score_and_the_kept_epochs():
    from engine.cluster_watch import SelfLabelWatch

    def output(predictions: list[int]) -> dict:
        predictions = torch.tensor(predictions)
        return {"predictions": predictions, "probabilities": torch.nn.functional.one_hot(predictions, 2).float()}

    groups = torch.tensor([[i] + [j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i] for i in range(8)])
    watch = SelfLabelWatch(0.5)
    watch.observe(0, output([0, 1, 0, 1, 0, 1, 0, 1]), groups, {})  # log 3 − log 2 = 0.4055
    watch.observe(1, output([0, 0, 0, 0, 1, 1, 1, 1]), groups, {})  # −log 2 = −0.6931
    watch.observe(2, output([0, 0, 0, 1, 1, 1, 1, 1]), groups, {})  # a worse epoch after the kept one
    assert "(-0.6931; SCAN model 0.4055)" in watch.kept_reason()


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
    assert intact["improved"] and watch.best_epoch == 3 and watch.best_score == intact["score"]
    # Epoch 4: the same score again is no improvement; the earlier epoch stays the kept one.
    again = watch.observe(4, assignments([1, 1, 1, 1, 0, 0, 0, 0]), GROUPS, {})
    assert again["score"] == pytest.approx(intact["score"]) and not again["improved"] and watch.best_epoch == 3
