"""data/stage_batches.py: both augmentation backends give a stage the same batches; speed settings resolve per
device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.augment import get_val_transformations
from data.folder import FolderDataset
from data.registry import get_train_dataset
from data.stage_batches import eval_batches, train_batches
from tests.conftest import ROOT
from utils.config import ConfigError, load_config
from utils.runtime import Runtime, resolve_fast_path, unwrap, wrap_model

CPU = Runtime(device=torch.device("cpu"))
BACKENDS = ["pil", "batched"]


def _cfg(env, config: str, backend: str, *overrides: str) -> dict:
    sets = ["num_workers=0", "batch_size=8", f"augmentation_backend={backend}", *overrides]
    return load_config(env, ROOT / "configs" / config, sets)


def _val_image(cfg: dict, dataset, index: int) -> torch.Tensor:
    return get_val_transformations(cfg)(dataset.load_image(index))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_view_batches_are_the_indexed_images(tiny_cifar_env, backend):
    """Self-labeling's views: 'image' is exactly the val transform of the image named by 'index'."""
    cfg = _cfg(tiny_cifar_env, "selflabel/selflabel_cifar10.yml", backend)
    dataset = get_train_dataset(cfg)
    batches = train_batches(cfg, dataset, CPU, views=("val", "train"))
    batch = next(iter(batches))
    assert len(batches) == 100 // 8
    assert {"image", "image_augmented", "target", "index"} <= set(batch)
    assert batch["image"].shape == batch["image_augmented"].shape == (8, 3, 32, 32)
    for slot in (0, 5):
        index = int(batch["index"][slot])
        assert torch.allclose(batch["image"][slot], _val_image(cfg, dataset, index), atol=1e-6)
        assert int(batch["target"][slot]) == dataset.targets[index]
    assert not torch.equal(batch["image"], batch["image_augmented"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_neighbour_batches(tiny_cifar_env, backend):
    cfg = _cfg(tiny_cifar_env, "scan/scan_cifar10.yml", backend, "num_neighbors=3")
    dataset = get_train_dataset(cfg)
    neighbors = np.stack([(np.arange(100) + shift) % 100 for shift in range(6)], axis=1)
    batch = next(iter(train_batches(cfg, dataset, CPU, neighbors=neighbors)))
    assert batch["anchor"].shape == batch["neighbor"].shape == (8, 3, 32, 32)
    assert torch.equal(batch["possible_neighbors"], torch.from_numpy(neighbors[batch["index"].numpy(), :4]))

    evaluation = eval_batches(cfg, dataset, CPU, neighbors=neighbors)
    batch = next(iter(evaluation))
    assert batch["index"].tolist() == list(range(8)) and len(evaluation) == 13
    assert torch.equal(batch["possible_neighbors"], torch.from_numpy(neighbors[:8]))
    assert torch.allclose(batch["anchor"][3], _val_image(cfg, dataset, 3), atol=1e-6)
    with pytest.raises(ValueError, match="it was mined on other data"):
        train_batches(cfg, dataset, CPU, neighbors=neighbors[:50])


@pytest.mark.parametrize("backend", BACKENDS)
def test_folders_of_mixed_sizes_go_through_decoding_workers(tmp_path, tiny_cifar_env, backend):
    """Images of several sizes: random views drawn inside each image, val views centre-cropped as PIL does."""
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate([(40, 36), (36, 44), (50, 33)] * 4):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{index:02d}.png")
    dataset = FolderDataset(tmp_path, split="train", test_fraction=0.25)
    cfg = _cfg(tiny_cifar_env, "pretext/simclr_cifar10.yml", backend, "batch_size=4")
    batch = next(iter(train_batches(cfg, dataset, CPU)))
    assert batch["image"].shape == batch["image_augmented"].shape == (4, 3, 32, 32)
    batch = next(iter(eval_batches(cfg, dataset, CPU)))
    for slot in range(4):
        assert torch.allclose(batch["image"][slot], _val_image(cfg, dataset, slot), atol=1e-6)


def test_channels_last_batches(tiny_cifar_env):
    cfg = _cfg(tiny_cifar_env, "pretext/simclr_cifar10.yml", "batched")
    runtime = Runtime(device=torch.device("cpu"), channels_last=True)
    batch = next(iter(train_batches(cfg, get_train_dataset(cfg), runtime)))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)


def test_auto_settings_resolve_to_the_faithful_path_on_cpu(tiny_cifar_env):
    cfg = load_config(tiny_cifar_env, ROOT / "configs/pretext/simclr_cifar10.yml")
    assert (cfg["amp"], cfg["channels_last"], cfg["augmentation_backend"], cfg["knn_every"]) == (
        "auto",
        "auto",
        "auto",
        10,
    )
    runtime = Runtime(device=torch.device("cpu"))
    resolve_fast_path(cfg, runtime)
    assert (cfg["amp"], cfg["channels_last"], cfg["augmentation_backend"]) == (False, False, "pil")
    assert not runtime.channels_last and not runtime.compile


def test_auto_settings_turn_the_fast_path_on_for_cuda(tiny_cifar_env):
    """Resolution only reads the device type, so a CUDA runtime can be described without a GPU."""
    cfg = load_config(tiny_cifar_env, ROOT / "configs/pretext/simclr_cifar10.yml", ["compile=true"])
    runtime = Runtime(device=torch.device("cuda", 0))
    resolve_fast_path(cfg, runtime)
    assert (cfg["amp"], cfg["channels_last"], cfg["augmentation_backend"]) == (True, True, "batched")
    assert runtime.channels_last and runtime.compile


@pytest.mark.parametrize(
    "override, message",
    [
        ("augmentation_backend=kornia", "'augmentation_backend' is 'kornia', but it must be one of pil, batched, auto"),
        ("amp=fast", "'amp' is 'fast', but it must be one of auto, true, false"),
        ("knn_every=0", "'knn_every' is 0, but it must be 1 or more"),
        ("channels_last=[1]", "'channels_last' must be true or false or a string"),
    ],
)
def test_bad_speed_settings_are_clear_errors(tiny_cifar_env, override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_fast_path(load_config(tiny_cifar_env, ROOT / "configs/pretext/simclr_cifar10.yml", [override]), CPU)


def test_channels_last_and_compile_wrappers_unwrap_to_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    wrapped = wrap_model(model, Runtime(device=torch.device("cpu"), channels_last=True, compile=True))
    assert unwrap(wrapped) is model
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(unwrap(wrapped).state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]


def test_both_backends_build_every_strategy_the_config_allows(tiny_cifar_env):
    from data.augment import get_train_transformations
    from data.batch_augment import get_batch_transformations
    from utils.config_schema import CHOICES

    with pytest.raises(
        ConfigError, match="'augmentation_strategy' is 'randaugment', but it must be one of simclr, ours"
    ):
        load_config(tiny_cifar_env, ROOT / "configs/pretext/simclr_cifar10.yml", ["augmentation_strategy=randaugment"])
    built = set()
    for config in ("pretext/simclr_cifar10.yml", "selflabel/selflabel_cifar10.yml"):
        cfg = load_config(tiny_cifar_env, ROOT / "configs" / config)
        for build in (get_train_transformations, get_batch_transformations):
            assert callable(build(cfg))
        built.add(cfg["augmentation_strategy"])
    assert built == set(CHOICES["augmentation_strategy"])


def test_every_training_loader_caps_the_batch_alike():
    """Image loader, device-resident index batches and cached-feature pairs: 10 samples and batch_size 16 give
    batches of 10, with the same warning."""
    from data.cached_features import CachedPairLoader, CachedSplit
    from data.dataloaders import train_loader
    from data.uint8_images import IndexBatches

    split = CachedSplit(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), torch.zeros(10, 2, dtype=torch.long), [])
    makers = (
        lambda: train_loader(list(range(10)), 16, 0, CPU),
        lambda: IndexBatches(10, 16, CPU, train=True),
        lambda: CachedPairLoader(split, 16, "cpu"),
    )
    for make in makers:
        with pytest.warns(UserWarning, match="^batch_size 16 is larger than the 10 training samples per process; "):
            loader = make()
        assert loader.batch_size == 10 and len(loader) == 1


def test_batches_pass_the_epoch_to_the_distributed_sampler_so_each_epoch_reshuffles():
    from torch.utils.data import DataLoader, DistributedSampler

    from data.dataloaders import set_epoch
    from data.stage_batches import Batches
    from utils.runtime import Runtime

    data = torch.arange(16.0)
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    batches = Batches(DataLoader(data, batch_size=8, sampler=sampler), lambda batch: batch, Runtime("cpu"))
    orders = []
    for epoch in (0, 1):
        set_epoch(batches, epoch)  # as the stages call it, on their Batches
        orders.append(list(sampler))
    assert sampler.epoch == 1 and orders[0] != orders[1]
