"""uint8 images for the batched backend: held once in memory (on the GPU when they fit) or decoded by workers.

Small datasets are read once into one tensor [N, 3, H, W] and every step gathers its batch by index, no workers;
larger or mixed-size ones keep DataLoader workers that only decode (training images as a zero-padded canvas with
each image's size, so random crops still see the whole image). Batches are drawn as the DataLoader path draws
them, DistributedSampler shards included (docs/speed.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torchvision.transforms.functional as TVF
from tqdm import tqdm

from data.dataloaders import capped_batch_size
from utils.distributed import shard_range
from utils.runtime import Runtime

MAX_IN_MEMORY_BYTES = 8 * 2**30  # larger image sets stay on disk and go through decoding workers
GPU_MEMORY_FRACTION = 0.4  # images move to the GPU when they take at most this share of its free memory


def load_uint8_images(dataset, max_bytes: int = MAX_IN_MEMORY_BYTES) -> torch.Tensor | None:
    """Every image of ``dataset`` as one uint8 CPU tensor [N, 3, H, W] (from its ``images`` array when it has one),
    or None at the first image of another size or when they would pass ``max_bytes``."""
    held = getattr(dataset, "images", None)
    if isinstance(held, np.ndarray) and held.ndim == 4 and held.shape[-1] == 3 and held.dtype == np.uint8:
        return torch.from_numpy(held).permute(0, 3, 1, 2).contiguous() if held.nbytes <= max_bytes else None
    first = dataset.get_image(0)
    height, width = first.shape[:2]
    if len(dataset) * 3 * height * width > max_bytes:
        return None
    images = torch.empty(len(dataset), 3, height, width, dtype=torch.uint8)
    for index in tqdm(range(len(dataset)), desc="Reading the images into memory", leave=False):
        image = first if index == 0 else dataset.get_image(index)
        if image.shape[:2] != (height, width):
            return None
        images[index] = torch.tensor(image).permute(2, 0, 1)
    return images


class DeviceImages:
    """A dataset's uint8 images [N, 3, H, W] and targets, held once: on the GPU when they fit, else pinned."""

    def __init__(self, images: torch.Tensor, targets, runtime: Runtime) -> None:
        self.device = runtime.device
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        on_gpu = runtime.device.type == "cuda" and (
            images.nbytes <= GPU_MEMORY_FRACTION * torch.cuda.mem_get_info(runtime.device)[0]
        )
        if on_gpu:
            images, targets = images.to(runtime.device), targets.to(runtime.device)
        elif runtime.device.type == "cuda":
            images = images.pin_memory()
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``indices``, on the compute device."""
        if self.images.device == indices.device:
            return self.images[indices]
        batch = self.images[indices.cpu()]
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)


class IndexBatches:
    """Index batches over ``num_samples`` samples as data/dataloaders.py draws them: ``train``, shuffled per epoch, last
    partial batch dropped, batch capped, DDP shards; else every index in order (under torchrun this shard's)."""

    def __init__(self, num_samples: int, batch_size: int, runtime: Runtime, train: bool) -> None:
        self.num_samples, self.runtime, self.train = num_samples, runtime, train
        self.epoch = 0
        if train:
            batch_size = capped_batch_size(num_samples, batch_size, runtime.world_size)
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This process's sample order for the current epoch."""
        if not self.train:  # in order; under torchrun this process's run of whole batches (data/dataloaders.py)
            return torch.tensor(
                shard_range(self.num_samples, self.batch_size, self.runtime.rank, self.runtime.world_size),
                dtype=torch.long,
            )
        if not self.runtime.distributed:
            return torch.randperm(self.num_samples)
        generator = torch.Generator()
        generator.manual_seed(self.epoch)  # DistributedSampler's seed 0 + epoch: the same permutation everywhere
        order = torch.randperm(self.num_samples, generator=generator)
        usable = self.num_samples // self.runtime.world_size * self.runtime.world_size
        return order[:usable][self.runtime.rank :: self.runtime.world_size]

    def __len__(self) -> int:
        if not self.train:
            return -(-len(self.indices()) // self.batch_size)
        return self.num_samples // self.runtime.world_size // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.indices().to(self.runtime.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


class DecodedImages(torch.utils.data.Dataset):
    """Worker-side decoding for data that stays on disk: sample i as a uint8 [3, H, W] tensor plus its target;
    ``crop_size`` centre-crops (the val transform's first step), else :func:`pad_collate` batches mixed sizes."""

    def __init__(self, dataset, crop_size: int | list | None = None) -> None:
        self.dataset, self.crop_size = dataset, crop_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        image = self.dataset.load_image(index)
        if self.crop_size is not None:
            image = TVF.center_crop(image, self.crop_size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {"image": pixels, "target": self.dataset.targets[index], "index": index}


def pad_collate(samples: list[dict]) -> dict:
    """Collate samples whose uint8 images differ in size: each image key becomes a zero-padded canvas [B, 3, H, W]
    and ``<key>_size`` holds every image's (height, width); the other keys collate as usual."""
    image_keys = [key for key, value in samples[0].items() if torch.is_tensor(value) and value.dtype == torch.uint8]
    batch = torch.utils.data.default_collate([{k: v for k, v in s.items() if k not in image_keys} for s in samples])
    for key in image_keys:
        sizes = torch.tensor([sample[key].shape[1:] for sample in samples], dtype=torch.int64)
        height, width = sizes.max(dim=0).values.tolist()
        canvas = torch.zeros(len(samples), 3, height, width, dtype=torch.uint8)
        for slot, sample in enumerate(samples):
            canvas[slot, :, : sample[key].shape[1], : sample[key].shape[2]] = sample[key]
        batch[key], batch[f"{key}_size"] = canvas, sizes
    return batch
