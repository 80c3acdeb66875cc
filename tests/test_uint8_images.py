"""data/uint8_images.py: images held in memory, index batches drawn like the DataLoader path, decoding workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image
from torch.utils.data import DistributedSampler

from data.cifar import CIFAR10
from data.folder import FolderDataset
from data.stl import STL10
from data.uint8_images import DecodedImages, DeviceImages, IndexBatches, load_uint8_images, pad_collate
from tests.conftest import write_cifar10
from tests.test_datasets import write_stl
from utils.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"))


def _rank(rank: int, world_size: int) -> Runtime:
    return Runtime(device=torch.device("cpu"), rank=rank, world_size=world_size)


@pytest.mark.parametrize("epoch", [0, 3])
def test_training_shards_are_distributed_samplers(epoch):
    """Under DDP each process gets DistributedSampler's shard (seed 0 + epoch, drop_last), cut into full batches."""
    samples, world_size, batch_size = 103, 3, 8
    seen = []
    for rank in range(world_size):
        sampler = DistributedSampler(range(samples), num_replicas=world_size, rank=rank, shuffle=True, drop_last=True)
        sampler.set_epoch(epoch)
        expected = list(sampler)
        batches = IndexBatches(samples, batch_size, _rank(rank, world_size), train=True)
        batches.set_epoch(epoch)
        got = [batch.tolist() for batch in batches]
        assert len(got) == len(batches) == len(expected) // batch_size
        assert all(len(batch) == batch_size for batch in got)
        assert sum(got, []) == expected[: len(got) * batch_size]
        seen += sum(got, [])
    assert len(seen) == len(set(seen)), "shards must not overlap"


def test_single_process_epochs_are_fresh_permutations_without_the_partial_batch():
    torch.manual_seed(0)
    batches = IndexBatches(50, 16, CPU, train=True)
    epochs = [torch.cat(list(batches)).tolist() for _ in range(2)]
    assert len(batches) == 3 and all(len(order) == 48 and len(set(order)) == 48 for order in epochs)
    assert epochs[0] != epochs[1] and set(epochs[0]) <= set(range(50))


def test_evaluation_visits_every_index_in_order_in_shards_of_whole_batches():
    batches = IndexBatches(10, 4, CPU, train=False)
    assert [batch.tolist() for batch in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(batches) == 3
    # Two processes: the three batches are dealt out whole (1 + 2), so each is the batch one process runs.
    shards = [IndexBatches(10, 4, _rank(rank, 2), train=False) for rank in (0, 1)]
    assert [[batch.tolist() for batch in shard] for shard in shards] == [[[0, 1, 2, 3]], [[4, 5, 6, 7], [8, 9]]]
    assert [len(shard) for shard in shards] == [1, 2]


def test_a_batch_larger_than_the_data_is_capped_with_a_warning():
    with pytest.warns(UserWarning, match="batch_size 64 is larger than the 10"):
        batches = IndexBatches(10, 64, CPU, train=True)
    assert [len(batch) for batch in batches] == [10]


def test_cifar_images_come_from_the_array_it_holds(tmp_path):
    write_cifar10(tmp_path / "cifar-10", train_per_batch=4, test=3)
    dataset = CIFAR10(tmp_path / "cifar-10", train=True)
    images = load_uint8_images(dataset)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    for index in (0, 7, 19):
        assert torch.equal(images[index], torch.tensor(dataset.get_image(index)).permute(2, 0, 1))


def test_stl10_is_read_image_by_image(tmp_path):
    write_stl(tmp_path, train_labels=[1, 2, 3])
    dataset = STL10(tmp_path, split="train+unlabeled")
    images = load_uint8_images(dataset)
    assert images.shape == (7, 3, 96, 96)
    assert all(torch.equal(images[i], torch.tensor(dataset.get_image(i)).permute(2, 0, 1)) for i in range(7))
    assert load_uint8_images(dataset, max_bytes=6 * 3 * 96 * 96) is None  # too big: stays on disk


def _folder(root, sizes):
    for index, size in enumerate(sizes):
        path = root / "pictures" / f"{index:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 10 * index, dtype=np.uint8)).save(path)
    return FolderDataset(root / "pictures", split="train", test_fraction=0.25)


def test_folders_of_one_size_are_held_and_mixed_sizes_are_not(tmp_path):
    same = _folder(tmp_path / "same", [(12, 8)] * 8)
    images = load_uint8_images(same)
    assert images.shape == (len(same), 3, 8, 12)
    assert torch.equal(images[2], torch.tensor(same.get_image(2)).permute(2, 0, 1))
    mixed = _folder(tmp_path / "mixed", [(12, 8), (12, 8), (12, 8), (9, 9)] * 2)
    assert load_uint8_images(mixed) is None


def test_device_images_gather_by_index():
    images = torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8)
    store = DeviceImages(images, [0, 1, 2, 0, 1, -1], CPU)
    index = torch.tensor([5, 0, 3])
    assert torch.equal(store.gather(index), images[index])
    assert store.targets[index].tolist() == [-1, 0, 0] and len(store) == 6


def test_pad_collate_keeps_each_image_at_the_top_left_with_its_size():
    small = torch.full((3, 2, 3), 7, dtype=torch.uint8)
    large = torch.full((3, 4, 2), 9, dtype=torch.uint8)
    batch = pad_collate([{"image": small, "target": 1, "index": 0}, {"image": large, "target": 2, "index": 5}])
    assert batch["image"].shape == (2, 3, 4, 3) and batch["image_size"].tolist() == [[2, 3], [4, 2]]
    assert (batch["image"][0, :, :2, :3] == 7).all() and (batch["image"][0, :, 2:] == 0).all()
    assert (batch["image"][1, :, :, :2] == 9).all() and (batch["image"][1, :, :, 2] == 0).all()
    assert batch["target"].tolist() == [1, 2] and batch["index"].tolist() == [0, 5]


def test_decoded_images_are_the_raw_image_or_its_centre_crop(tmp_path):
    dataset = _folder(tmp_path, [(12, 8)] * 4)
    raw, cropped = DecodedImages(dataset)[1], DecodedImages(dataset, crop_size=6)[1]
    assert torch.equal(raw["image"], torch.tensor(dataset.get_image(1)).permute(2, 0, 1))
    expected = np.asarray(TVF.center_crop(dataset.load_image(1), 6))
    assert torch.equal(cropped["image"], torch.tensor(expected).permute(2, 0, 1))
    assert raw["target"] == dataset.targets[1] and raw["index"] == 1
