"""engine/stage.py: what every entry script does around its loop; one clear message per user error."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from engine.stage import check_cluster_count, move_aside, user_message
from utils.config import ConfigError


def test_a_worker_error_keeps_all_lines_of_its_message():
    from engine.stage import user_message
    from utils.config import ConfigError

    text = (
        "Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ConfigError(...)\n'
        f"{ConfigError.__module__}.ConfigError: first line\nsecond line\nthird line"
    )
    assert user_message(ConfigError(text)) == "first line\nsecond line\nthird line"


# Small pieces of the stage glue --------------------------------------------------------------------------
def test_fresh_moves_the_folder_aside_and_never_deletes(tmp_path):
    folder = tmp_path / "scan"
    assert move_aside(folder) is None
    folder.mkdir()
    assert move_aside(folder) is None  # empty: nothing worth keeping
    (folder / "checkpoint.pth.tar").write_bytes(b"old run")
    first = move_aside(folder)
    folder.mkdir()
    (folder / "checkpoint.pth.tar").write_bytes(b"second run")
    second = move_aside(folder)
    assert first != second and first.name.startswith("scan.old-") and not folder.exists()
    assert (first / "checkpoint.pth.tar").read_bytes() == b"old run"
    assert (second / "checkpoint.pth.tar").read_bytes() == b"second run"


def test_more_clusters_than_images_is_a_config_error():
    check_cluster_count(10, 10)
    with pytest.raises(ConfigError, match="num_classes is 11, but the training split has only 10 images"):
        check_cluster_count(11, 10)


class MissingImages(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        from data.base import DatasetNotFoundError

        raise DatasetNotFoundError("Folder dataset: 2 images are gone\nPut them back.")


@pytest.mark.slow
def test_errors_from_loader_workers_lose_the_worker_traceback():
    from data.base import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError) as raised:
        next(iter(DataLoader(MissingImages(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)
    assert user_message(raised.value) == "Folder dataset: 2 images are gone\nPut them back."
    assert user_message(ValueError("plain")) == "plain"
