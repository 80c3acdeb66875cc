"""Tests written against survivors of bench/mutation_test.py (bench/MUTATION.md): each fails on the mutant it
names and passes on today's code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.neighbors import NeighborsFileError
from data.wrappers import NeighborsDataset
from losses import ConfidenceBasedCE, SCANLoss


class Images:
    """A dataset of `n` images (dicts with 'image' and 'target'), as the wrappers expect."""

    def __init__(self, n: int) -> None:
        self.n, self.transform = n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.full((1,), float(index)), "target": index % 2}


# losses/losses.py: `0.0 < fraction <= 1.0` with 1.0 changed
def test_the_per_cluster_fraction_may_be_one_but_not_more_nor_zero():
    ConfidenceBasedCE(0.99, False, fraction=1.0)  # every member of every cluster: allowed
    ConfidenceBasedCE(0.99, False, fraction=0.01)  # one in a hundred: allowed too
    for fraction in (1.2, 0.0, -0.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            ConfidenceBasedCE(0.99, False, fraction=fraction)


# losses/losses.py: `prior.numel() < 2` with 2 changed
def test_a_target_prior_needs_two_sizes_and_two_are_enough():
    loss = SCANLoss(target_prior=[3.0, 1.0])
    assert torch.allclose(loss.target_prior, torch.tensor([0.75, 0.25]))
    for bad in ([1.0], [2.0, 0.0], [[1.0, 1.0]]):
        with pytest.raises(ValueError, match="one positive size per cluster"):
            SCANLoss(target_prior=bad)


# data/wrappers.py: `indices.max() < len(dataset)` with < changed to <=, and `indices.size == 0` with 0 changed
def test_a_neighbour_index_one_past_the_dataset_is_refused_the_last_one_accepted():
    dataset = Images(4)
    last = np.array([[0, 3], [1, 3], [2, 3], [3, 0]])
    assert NeighborsDataset(dataset, last)[3]["target"] == 1
    with pytest.raises(NeighborsFileError, match="mined on other data"):
        NeighborsDataset(dataset, np.array([[0, 4], [1, 0], [2, 0], [3, 0]]))
    with pytest.raises(NeighborsFileError, match="mined on other data"):
        NeighborsDataset(dataset, np.array([[0, -1], [1, 0], [2, 0], [3, 0]]))


def test_an_empty_dataset_takes_an_empty_neighbour_file():
    assert len(NeighborsDataset(Images(0), np.zeros((0, 5), dtype=np.int64))) == 0


# data/batch_augment.py: SimCLR's colour jitter step picks brightness for op 0 (`op == 0` with 0 changed)
def test_the_jitter_step_applies_brightness_contrast_and_saturation_as_numbered():
    from data import batch_augment as ba

    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 6, 6)).float()
    factors = torch.tensor([[0.5, 1.5, 0.2, 0.0]]).expand(3, 4)  # brightness, contrast, saturation, hue
    op, active = torch.tensor([0, 1, 2]), torch.tensor([True, True, True])
    out = ba.SimCLRBatchTransform.blend_step(x, op, active, factors)
    assert torch.equal(out[0], ba.adjust_brightness(x[:1], torch.tensor([0.5]))[0])
    assert torch.equal(out[1], ba.adjust_contrast(x[1:2], torch.tensor([1.5]))[0])
    assert torch.equal(out[2], ba.adjust_color(x[2:3], torch.tensor([0.2]))[0])
    idle = ba.SimCLRBatchTransform.blend_step(x, op, torch.tensor([False, False, False]), factors)
    assert torch.equal(idle, x)  # an inactive image is left exactly as it was


# data/batches.py: Batches.set_epoch forwards to the loader (dropped statement): under torchrun every epoch would
# otherwise draw the same shuffled order
def test_batches_pass_the_epoch_to_the_distributed_sampler_so_each_epoch_reshuffles():
    from torch.utils.data import DataLoader, DistributedSampler

    from data.batches import Batches
    from data.loaders import set_epoch
    from utils.runtime import Runtime

    data = torch.arange(16.0)
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    batches = Batches(DataLoader(data, batch_size=8, sampler=sampler), lambda batch: batch, Runtime("cpu"))
    orders = []
    for epoch in (0, 1):
        set_epoch(batches, epoch)  # as the stages call it, on their Batches
        orders.append(list(sampler))
    assert sampler.epoch == 1 and orders[0] != orders[1]


# estimate_k.py: its summary, table and argument checks (the slow test was the only one to run them)
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


# selflabel.py: an epoch without batches reports nothing confident (`0.0 if predicted is None` with 0.0 changed)
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
        "weak_strong_agreement": None,  # unknown: the keep rule does not check it
    }


# scan.py: the logged consistency and entropy are the means over the heads (`/ len(losses)` changed to `*`)
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


# utils/runtime.py: seed_everything seeds python's generator too (dropped `random.seed`), which picks neighbours
def test_seed_everything_makes_python_numpy_and_torch_draws_repeat_and_offsets_them_by_rank():
    import random

    from utils.runtime import seed_everything

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draws()
    seed_everything(3)
    assert draws() == first
    seed_everything(3, rank=1)
    assert all(a != b for a, b in zip(draws(), first))


# models/resnet.py: BatchNorm starts at weight 1, bias 0 (the init's constant 0 changed)
def test_a_fresh_resnet_starts_its_batchnorms_at_weight_one_and_bias_zero():
    from models import build_backbone

    backbone = build_backbone("resnet18", base_width=2)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)


# utils/config.py: without --config_env, eval.py and predict.py read the repository's configs/env.yml (parents[1])
def test_the_default_env_file_is_the_repositorys_configs_env_yml():
    import argparse
    from pathlib import Path

    from utils.config import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, env_required=False)
    args = parser.parse_args(["--config_exp", "x.yml"])
    assert Path(args.config_env) == Path(__file__).resolve().parents[1] / "configs" / "env.yml"
    assert Path(args.config_env).is_file()


# tools/sort_images.py: cluster folders are numbered with two digits at least, more only when K needs them
def test_cluster_folders_have_two_digits_unless_more_clusters_need_more():
    from tools.sort_images import cluster_folder_name

    assert cluster_folder_name(3, 10) == "cluster_03"
    assert cluster_folder_name(3, 2) == "cluster_03"
    assert cluster_folder_name(7, 101) == "cluster_007"
    assert cluster_folder_name(7, 100, "a cat/dog") == "cluster_07_a_cat_dog"


# engine/model_files.py: a clustering file that stores no head (a self-label model) is read with head 0
def test_a_one_head_model_file_without_a_stored_head_uses_head_zero(tmp_path):
    from engine.model_files import architecture_record, load_model_file, save_state_dict_file
    from models import ClusteringModel, build_backbone

    cfg = {"setup": "selflabel", "backbone": "resnet18", "backbone_kwargs": {"base_width": 4}, "num_classes": 3}
    model = ClusteringModel(build_backbone("resnet18", base_width=4), 3, 1)
    path = tmp_path / "self-label_model.pth.tar"
    save_state_dict_file(model.state_dict(), path, architecture_record({**cfg, "num_heads": 1}, num_heads=1))
    loaded, head = load_model_file({**cfg, "num_heads": 1}, path)
    assert head == 0 and loaded.num_heads == 1


# engine/evaluate.py: the metrics take tensors that still carry gradients (`.detach()` dropped in `_to_numpy`)
def test_cluster_metrics_accept_probabilities_that_carry_gradients():
    from engine.evaluate import cluster_metrics

    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    probabilities = torch.softmax(logits, dim=1)
    predictions, targets = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    scores = cluster_metrics(predictions, probabilities, targets)
    assert scores["ACC"] == 1.0 and scores["matching"] == "hungarian"
    assert scores["reordered_predictions"].tolist() == [1, 0, 1, 0]


# engine/knn.py: fewer samples than neighbours asked for (`k < topk + 1`, `topk + 1 - k` changed): every row still
# gets topk + 1 columns, the missing ones repeating its farthest real neighbour
@pytest.mark.parametrize("n", [4, 5, 6])
def test_mining_fewer_samples_than_neighbours_repeats_the_farthest_one(n):
    from engine.knn import mine_nearest_neighbors

    angles = torch.arange(n, dtype=torch.float32) * 0.3  # points on an arc: neighbours ordered by |i − j|
    features = torch.stack([angles.cos(), angles.sin()], dim=1).numpy()
    indices, _ = mine_nearest_neighbors(features, np.zeros(n, dtype=np.int64), topk=5)
    assert indices.shape == (n, 6)
    for i in range(n):
        by_distance = sorted(range(n), key=lambda j: (abs(i - j), j))
        real = indices[i, :n]
        assert real[0] == i and sorted(abs(i - j) for j in real) == [abs(i - j) for j in by_distance]
        assert (indices[i, n:] == indices[i, n - 1]).all()


# engine/knn.py: SCORES_PER_CHUNK (2**27 changed to 2*27): a chunk holds 512 MB of float32 scores, not a handful
def test_a_query_block_holds_up_to_512_mb_of_float32_scores():
    from engine.knn import query_block_rows

    budget = 512 * 2**20 // 4  # float32 scores
    for rows in (10, 50_000, 1_281_167):
        block = query_block_rows(rows)
        assert block * rows <= budget < (block + 1) * rows


# utils/distributed.py: ELEMENTS_PER_GATHER (2**26 changed to 2*26): a gather of a few MB (features of a test split)
# goes in one message per tensor, not in thousands of slices
def test_a_gather_of_a_few_megabytes_goes_in_one_message(monkeypatch):
    from tests.test_invariants import ThreadedProcessGroup
    from utils import distributed

    class CountingGroup(ThreadedProcessGroup):
        def __init__(self, world_size: int) -> None:
            super().__init__(world_size)
            self.sizes: list[int] = []

        def all_gather(self, received, sent) -> None:
            if self.get_rank() == 0:
                self.sizes.append(sent.numel())
            super().all_gather(received, sent)

    group = CountingGroup(2)
    monkeypatch.setattr(distributed, "dist", group)
    shards = [torch.arange(0, 600), torch.arange(600, 1000)]

    def work(rank: int) -> dict:
        features = shards[rank][:, None].float().expand(-1, 128).contiguous()
        return distributed.gather_in_order({"features": features}, shards[rank])

    for gathered in group.run(work):
        assert not isinstance(gathered, Exception), gathered
        assert torch.equal(gathered["features"][:, 0], torch.arange(1000.0))
    assert [size for size in group.sizes if size % 128 == 0 and size > 1] == [600 * 128]  # the largest shard


# utils/runtime.py: `srun` with two tasks is already distributed (`SLURM_NTASKS < 2` changed to `<= 2`)
def test_srun_with_two_tasks_takes_rank_and_world_from_slurm():
    from utils.runtime import adopt_slurm_environment

    environ = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "node[4-5]"}
    adopt_slurm_environment(environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["MASTER_ADDR"]) == ("1", "2", "node4")


# data/loaders.py: a split that exactly fills one batch per process keeps the batch without a warning (`>=` to `>`)
def test_a_batch_exactly_as_large_as_the_split_is_kept_without_a_warning():
    import warnings

    from data.loaders import capped_batch_size

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert capped_batch_size(10, 10, 1) == 10 and capped_batch_size(20, 10, 2) == 10
    with pytest.warns(UserWarning, match="using batch_size 9"):
        assert capped_batch_size(9, 10, 1) == 9


# data/loaders.py: under torchrun the train sampler shuffles and drops the uneven tail (`shuffle=True`,
# `drop_last=True` changed): not the same interleaved order every run, no sample twice in an epoch
def test_the_distributed_train_loader_shuffles_its_shard(monkeypatch):
    import torch.distributed as dist

    from data.loaders import train_loader
    from utils.runtime import Runtime

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    loader = train_loader(list(range(41)), 4, 0, Runtime(torch.device("cpu"), rank=0, world_size=2))
    assert len(loader.sampler) == 20  # 41 items: each of 2 processes gets 20, none a padded repeat
    seen = [int(x) for batch in loader for x in batch]
    assert len(seen) == 20 and len(set(seen)) == 20
    assert seen != list(range(0, 40, 2))  # unshuffled, rank 0 of 2 would get 0, 2, 4, ...


# engine/stage.py: an error re-raised from a DataLoader worker keeps every line of its own message (`i + 1` changed)
def test_a_worker_error_keeps_all_lines_of_its_message():
    from engine.stage import user_message
    from utils.config import ConfigError

    text = (
        "Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ConfigError(...)\n'
        "utils.config.ConfigError: first line\nsecond line\nthird line"
    )
    assert user_message(ConfigError(text)) == "first line\nsecond line\nthird line"


# tools/new_dataset.py: SMALL_IMAGES (64 changed): images up to 64 px keep their size, larger ones are read at 96
def test_images_up_to_64_px_keep_their_size_and_larger_ones_are_read_at_96():
    from tools.new_dataset import choose_geometry

    assert (choose_geometry(64).image_size, choose_geometry(64).stem) == (64, "cifar")
    assert (choose_geometry(65).image_size, choose_geometry(65).stem) == (96, "stl")


# tools/report_options.py: the gallery's defaults are the documented ones (docs/outputs.md: --gallery_top 8,
# --gallery_random 8, --thumbnail_size 64) and a thumbnail of 8 px is the smallest accepted (`value < 8` changed)
def test_gallery_defaults_are_the_documented_ones_and_thumbnails_start_at_8_px():
    import argparse

    from tools.report_options import add_report_arguments, gallery_options

    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    options = gallery_options(parser.parse_args([]))
    assert (options.top, options.random, options.thumbnail) == (8, 8, 64)
    assert gallery_options(parser.parse_args(["--thumbnail_size", "8"])).thumbnail == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--thumbnail_size", "7"])


# eval.py: prediction_rows' confidence is each image's largest probability (`max(dim=1)` changed)
def test_prediction_rows_name_each_image_its_cluster_confidence_and_label():
    import eval as eval_script

    class Split:
        classes = ["cat", "dog"]

    output = {
        "probabilities": torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]),
        "predictions": torch.tensor([0, 1, 0]),
        "targets": torch.tensor([1, 0, -1]),
    }
    rows = eval_script.prediction_rows(Split(), output, "pets")
    assert [(file, cluster, label) for file, cluster, _, label in rows] == [
        ("pets[0]", 0, "dog"),
        ("pets[1]", 1, "cat"),
        ("pets[2]", 0, ""),
    ]
    assert [confidence for _, _, confidence, _ in rows] == pytest.approx([0.9, 0.7, 0.6])


# engine/report.py: clustering_report scores labelled data (`targets < 0` changed; `metrics.update(scores)` dropped)
# and skips the label metrics, not the sizes, without labels
def test_clustering_report_scores_labelled_data_and_counts_sizes_without_labels(tmp_path, monkeypatch):
    import json

    from engine import report

    drawn = []
    monkeypatch.setattr(report, "plot_confusion_matrix", lambda *args: drawn.append(args[-1]))
    output = {
        "predictions": torch.tensor([2, 2, 0, 0, 0]),
        "probabilities": torch.nn.functional.one_hot(torch.tensor([2, 2, 0, 0, 0]), 3).float(),
        "targets": torch.tensor([0, 0, 1, 1, 0]),
    }
    metrics = report.clustering_report(output, ["a", "b"], tmp_path / "labelled", extra={"head": 1})
    assert metrics["head"] == 1 and metrics["num_samples"] == 5 and metrics["cluster_sizes"] == [3, 0, 2]
    assert metrics["ACC"] == pytest.approx(0.8) and "reordered_predictions" not in metrics
    assert json.loads((tmp_path / "labelled/metrics.json").read_text()) == metrics
    assert drawn == [tmp_path / "labelled/confusion_matrix.png"]
    unlabelled = report.clustering_report({**output, "targets": torch.full((5,), -1)}, [], tmp_path / "none")
    assert unlabelled == {"num_samples": 5, "cluster_sizes": [3, 0, 2]} and len(drawn) == 1


# models/library.py: `pretrained: default` of a timm backbone loads timm's weights into it (`load_state_dict`
# dropped; `num_classes=0` changed, which gives a model with a classifier). timm is optional: a stand-in that
# builds models as timm.create_model does (a classifier `head` unless num_classes=0).
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


# utils/config.py: a dashed flag is answered with its underscored spelling (`flag[2:]` changed), not with the
# closest other flag difflib finds (here one as close: `--ab-cd` is one letter from both)
def test_a_dashed_flag_is_answered_with_its_underscored_spelling():
    import argparse

    from utils.config import spelling_hints

    parser = argparse.ArgumentParser()
    parser.add_argument("--ab_cd")
    parser.add_argument("--abxcd")
    assert spelling_hints(["--ab-cd", "1"], parser._option_string_actions) == ["--ab-cd: did you mean --ab_cd?"]
