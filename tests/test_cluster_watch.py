"""The self-label watch: cluster warnings, the logged label-free score, and which epoch is kept (hand-counted cases)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.cluster_criteria import assignment_scan_loss, neighbour_agreement
from engine.cluster_watch import SelfLabelWatch, shrunken_clusters
from engine.metrics import cluster_metrics


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


def test_the_last_intact_epoch_is_kept_though_its_neighbour_agreement_fell():
    """A recorded history like the weak-pretext digits' (docs/selflabel.md): self-labeling moves images away from
    their mined neighbours (the assignment SCAN loss rises at every epoch), no cluster shrinks, the strong views
    agree more and more with the weak ones, and the pseudo-labels settle (epochs 2 and 3 agree). The last epoch is
    kept, not the SCAN model that the neighbour-agreement rule kept; an epoch with a shrunken cluster never is, and
    the choice survives a resume."""
    watch = SelfLabelWatch(warning_fraction=0.5)
    scan = watch.observe(0, head_output([0, 0, 0, 0, 1, 1, 1, 1]), GROUPS, {})  # the groups: all 24 pairs agree
    assert scan["improved"] and watch.best_epoch == 0 and scan["cluster_sizes"] == [4, 4]
    first = watch.observe(1, head_output([0, 0, 0, 1, 1, 1, 1, 0], 0.99), GROUPS, {"ACC": 0.75}, 0.70)  # 12 of 24
    second = watch.observe(2, head_output([0, 0, 1, 1, 1, 1, 0, 0], 0.99), GROUPS, {}, 0.75)  # 8 of 24
    settled = watch.observe(3, head_output([0, 0, 1, 1, 1, 1, 0, 0], 0.99), GROUPS, {}, 0.80)
    assert scan["score"] == pytest.approx(-math.log(2), rel=1e-6)  # −log(24/24) − log 2
    assert first["score"] == pytest.approx(-math.log(12 / 24) - math.log(2), abs=1e-6)  # = 0
    assert second["score"] == settled["score"] == pytest.approx(-math.log(8 / 24) - math.log(2), rel=1e-6)
    assert all(record["improved"] and not record["warnings"] for record in (first, second, settled))
    assert first["ACC"] == 0.75 and watch.first_agreement == 0.70 and watch.best_epoch == 3
    rule = "no emptied or shrunken cluster and a weak/strong agreement at least epoch 1's"
    assert watch.kept_reason() == f"epoch 3, the last one, has {rule}"
    # Epoch 4 keeps 1 of cluster 0's 4 images (below half): never kept, whatever its agreement.
    shrunk = watch.observe(4, head_output([1, 1, 1, 1, 1, 1, 1, 0]), GROUPS, {}, 0.99)
    assert not shrunk["improved"] and shrunk["warnings"][0]["kind"] == "shrunk" and watch.best_epoch == 3
    assert watch.kept_reason() == f"epoch 3 is the last with {rule} (no later epoch has)"
    assert watch.all_warnings() == [{"epoch": 4, "cluster": 0, "size": 1, "size_after_scan": 4, "kind": "shrunk"}]
    assert any("cluster 0 fell to 1 images" in line for line in watch.warning_lines(shrunk))

    resumed = SelfLabelWatch(0.5, watch.state_dict())
    assert resumed.best_epoch == 3 and resumed.first_agreement == 0.70 and len(resumed.history) == 5
    intact = resumed.observe(5, head_output([0, 0, 1, 1, 1, 1, 0, 0]), GROUPS, {}, 0.70)  # as epoch 1's: kept
    assert intact["improved"] and resumed.best_epoch == 5


def test_an_epoch_whose_strong_views_agree_less_than_in_epoch_1_is_not_kept():
    """Drifting into a few clusters (the threshold rule at 0.99 on a weak pretext model) lowered the weak/strong
    agreement epochs before any cluster fell below the warning size."""
    watch = SelfLabelWatch(warning_fraction=0.25)
    watch.observe(0, head_output([0, 0, 0, 0, 1, 1, 1, 1]), GROUPS, {})
    watch.observe(1, head_output([0, 0, 0, 0, 1, 1, 1, 1]), GROUPS, {}, 0.78)
    drifting = watch.observe(2, head_output([0, 0, 0, 1, 1, 1, 1, 1]), GROUPS, {}, 0.77)
    assert not drifting["improved"] and not drifting["warnings"] and watch.best_epoch == 1
    rule = "no emptied or shrunken cluster and a weak/strong agreement at least epoch 1's"
    assert watch.kept_reason() == f"epoch 1 is the last with {rule} (no later epoch has)"


def test_the_scan_head_is_kept_when_every_epoch_empties_or_shrinks_a_cluster():
    watch = SelfLabelWatch(warning_fraction=0.25)
    watch.observe(0, head_output([0, 0, 0, 0, 1, 1, 1, 1]), GROUPS, {})
    watch.observe(1, head_output([1, 1, 1, 1, 1, 1, 1, 1]), GROUPS, {}, 0.9)
    watch.observe(2, head_output([1, 1, 1, 1, 1, 1, 1, 1]), GROUPS, {}, 0.9)
    assert watch.best_epoch == 0
    assert watch.kept_reason().endswith("(no later epoch has): kept the SCAN head")


def test_without_neighbours_or_agreement_epochs_are_watched_and_kept_but_not_scored():
    watch = SelfLabelWatch(warning_fraction=0.25)
    watch.observe(0, head_output([0, 1]), None, {})
    intact = watch.observe(1, head_output([1, 0]), None, {})
    emptied = watch.observe(2, head_output([1, 1]), None, {})
    assert intact["score"] is None and intact["improved"] and watch.best_epoch == 1
    assert not emptied["improved"] and emptied["warnings"][0]["kind"] == "emptied"


def test_one_neighbour_agreement_for_the_watch_and_the_choice_of_k():
    """Tensors (the watch) and arrays (estimate_k) give the same exact share; a self pair outside column 0 (a
    duplicate image mined before the image itself) is skipped wherever it stands."""
    import numpy as np

    assignment = [0, 0, 1, 1]
    neighbors = [[1, 0, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]]  # row 0 holds itself in column 1
    # Pairs left: (0,1) ✓ (0,2) ✗ (1,0) ✓ (1,3) ✗ (2,3) ✓ (2,0) ✗ (3,2) ✓ (3,1) ✗ → 4 of 8, not 5 of 9.
    assert neighbour_agreement(torch.tensor(assignment), torch.tensor(neighbors)) == 0.5
    assert neighbour_agreement(np.array(assignment), np.array(neighbors)) == 0.5


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


RECORDED = Path(__file__).parent / "data" / "selflabel_weak_digits.json"


def replay(variant: str) -> tuple[SelfLabelWatch, list[float]]:
    """The recorded self-label run through the watch, as selflabel.py feeds it; also each epoch's test ACC."""
    recorded = json.loads(RECORDED.read_text())
    run, neighbors = recorded[variant], torch.tensor(recorded["neighbors"])
    labels = torch.tensor([int(label) for label in recorded["labels"]])
    watch, accs = SelfLabelWatch(warning_fraction=0.25), []
    for epoch, (clusters, agreement) in enumerate(zip(run["predictions"], run["weak_strong_agreement"])):
        predictions = torch.tensor([int(cluster) for cluster in clusters])
        output = {"predictions": predictions, "probabilities": torch.nn.functional.one_hot(predictions, 10).float()}
        watch.observe(epoch, output, neighbors, {}, agreement)
        accs.append(cluster_metrics(predictions, output["probabilities"], labels)["ACC"])
    return watch, accs


def test_a_recorded_weak_pretext_run_keeps_its_last_epoch_not_the_scan_model():
    """Per-cluster pseudo-labels from a weak pretext model (top-20 neighbours 58 % right): the assignment SCAN loss
    ends higher than the SCAN model's (the old rule kept epoch 0, ACC 0.767), no cluster shrinks, the pseudo-labels
    settle (under 2 % of the test images change cluster in each of the last five epochs), and ACC reaches 0.858."""
    watch, accs = replay("per_cluster@0.9")
    history = watch.history
    assert min(range(len(history)), key=lambda epoch: history[epoch]["score"]) == 0
    assert history[-1]["score"] > history[0]["score"] and not watch.all_warnings()
    recorded = json.loads(RECORDED.read_text())["per_cluster@0.9"]["predictions"]
    changed = [sum(a != b for a, b in zip(before, after)) / 360 for before, after in zip(recorded, recorded[1:])]
    assert max(changed[-5:]) < 0.02
    assert (
        watch.best_epoch == 20
        and accs[0] == pytest.approx(0.767, abs=5e-4)
        and accs[20] == pytest.approx(0.858, abs=5e-4)
    )


def test_a_recorded_drift_into_few_clusters_keeps_an_epoch_before_it():
    """The paper's threshold rule at 0.99 on the same model: ACC falls from epoch 11 on while every cluster stays
    above the warning size until epoch 20; the weak/strong agreement falls below epoch 1's first, so the kept epoch
    is at the SCAN model's ACC, not the last intact epoch's 0.567."""
    watch, accs = replay("threshold@0.99")
    first_warning = min(warning["epoch"] for warning in watch.all_warnings())
    assert first_warning == 20 and accs[19] < accs[0] - 0.15
    assert watch.best_epoch < first_warning and accs[watch.best_epoch] >= accs[0] - 0.005
