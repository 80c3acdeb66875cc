"""Figures written by the evaluation scripts: confusion matrix and cluster prototypes.

Everything goes straight to a PNG file with the Agg backend: the scripts run on headless
machines, where opening a window would fail or hang.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

MAX_ANNOTATED_CLASSES = 20
MAX_FIGURE_INCHES = 40.0
MAX_COLUMNS = 10

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Callers hand us CPU tensors or arrays; sklearn and matplotlib want arrays."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def row_normalized_confusion(predictions: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Confusion matrix with rows = true class, each row divided by its sample count. A class without samples keeps a
    zero row instead of NaN, so the plot stays readable."""
    preds = _to_numpy(predictions).reshape(-1)
    gts = _to_numpy(targets).reshape(-1)
    counts = confusion_matrix(gts, preds, labels=np.arange(num_classes)).astype(np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)


def plot_confusion_matrix(
    predictions: ArrayLike, targets: ArrayLike, class_names: list[str], path: str | os.PathLike
) -> None:
    """Save the row-normalised confusion matrix of (matched) predictions as a PNG at `path`. The figure grows with the
    number of classes (capped so ImageNet-1k stays a sane size); cells carry percentages only when there are few enough
    classes to read them."""
    num_classes = len(class_names)
    matrix = row_normalized_confusion(predictions, targets, num_classes)
    side = min(max(6.0, 0.45 * num_classes + 2.0), MAX_FIGURE_INCHES)
    font = max(2.0, min(8.0, 150.0 / max(num_classes, 1)))

    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=font)
    ax.set_yticklabels(class_names, fontsize=font)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for (row, col), value in np.ndenumerate(matrix):
            colour = "white" if value > 0.5 else "black"
            ax.text(col, row, f"{100 * value:.0f}", ha="center", va="center", color=colour, fontsize=font)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_prototypes(images: list[np.ndarray], titles: list[str], path: str | os.PathLike) -> None:
    """Save a titled grid (at most 10 columns) of H×W×3 uint8 images as a PNG at `path`."""
    if not images:
        raise ValueError("plot_prototypes: no images to plot.")
    if len(images) != len(titles):
        raise ValueError(f"plot_prototypes: {len(images)} images but {len(titles)} titles.")
    columns = min(MAX_COLUMNS, len(images))
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
