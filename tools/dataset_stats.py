"""Per-channel mean and std of a dataset's training images, printed as the YAML lines for its configs.

    python -m tools.dataset_stats --config_env configs/env.yml --config_exp configs/pretext/simclr_custom.yml

Normalisation should match the data: ImageNet's statistics suit everyday photos, not microscopy, satellite or
document images. The statistics are taken over every pixel of the training split as the dataset serves it
(after dataset_kwargs.image_size), before any crop, with pixel values in [0, 1] as ToTensor gives them.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from data.registry import get_train_dataset
from engine.stage import run_cli
from utils.config import add_config_arguments, load_config
from utils.progress import tqdm


def channel_stats(dataset, num_workers: int) -> tuple[list[float], list[float]]:
    """(mean, std) per channel over all pixels of all images; images may differ in size. Sums are kept in float64 so
    that millions of images do not lose precision."""
    total = torch.zeros(3, dtype=torch.float64)
    total_squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    # batch_size=None: images of different sizes are not stacked, each sample arrives on its own.
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    for sample in tqdm(loader, desc="Mean and std", total=len(dataset)):
        image = sample["image"].to(torch.float64).flatten(1)
        total += image.sum(dim=1)
        total_squares += (image * image).sum(dim=1)
        pixels += image.shape[1]
    mean = total / pixels
    std = (total_squares / pixels - mean * mean).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Per-channel mean/std of the training images, as config YAML")
    add_config_arguments(parser, env_required=False)
    args = parser.parse_args(argv)
    cfg = load_config(args.config_env, args.config_exp, args.overrides)
    dataset = get_train_dataset(cfg, transforms.ToTensor(), split=cfg["train_split"])
    mean, std = channel_stats(dataset, cfg["num_workers"])
    print(
        f"\nMean and std per channel (RGB) of the {len(dataset)} training images of {cfg['train_db_name']}.\n"
        f"Paste these lines under augmentation_kwargs and under transformation_kwargs, in the configs of all "
        f"three stages:\n"
        f"   normalize:\n"
        f"      mean: [{', '.join(f'{value:.4f}' for value in mean)}]\n"
        f"      std: [{', '.join(f'{value:.4f}' for value in std)}]",
        flush=True,
    )
    return {"mean": mean, "std": std, "num_images": len(dataset)}


if __name__ == "__main__":
    run_cli(main)
