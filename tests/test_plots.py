"""Tests of utils/plots.py: the figures are real PNG files and the matrix is normalised per row."""

import numpy as np
import pytest
import torch
from PIL import Image

from utils.plots import plot_confusion_matrix, plot_prototypes, row_normalized_confusion


def assert_valid_png(path, min_bytes=5_000):
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()


def test_row_normalized_confusion_rows_are_true_classes():
    targets = torch.tensor([0, 0, 0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 0, 1, 1, 0])
    matrix = row_normalized_confusion(predictions, targets, 3)
    np.testing.assert_allclose(matrix, [[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert not np.isnan(matrix).any()  # class 2 has no samples: zero row, not NaN


@pytest.mark.parametrize("num_classes", [3, 25])
def test_plot_confusion_matrix_writes_png(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, num_classes, size=300)
    predictions = np.where(rng.random(300) < 0.7, targets, rng.integers(0, num_classes, size=300))
    path = tmp_path / "confusion_matrix.png"
    plot_confusion_matrix(
        torch.from_numpy(predictions), torch.from_numpy(targets), [f"class {i}" for i in range(num_classes)], path
    )
    assert_valid_png(path)


def test_plot_prototypes_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(12)]
    path = tmp_path / "prototypes.png"
    plot_prototypes(images, [f"cluster {i}" for i in range(12)], path)
    assert_valid_png(path)
    with Image.open(path) as image:
        assert image.width > image.height  # 10 columns, 2 rows


def test_plot_prototypes_rejects_mismatched_titles(tmp_path):
    with pytest.raises(ValueError):
        plot_prototypes([np.zeros((4, 4, 3), dtype=np.uint8)], [], tmp_path / "x.png")
