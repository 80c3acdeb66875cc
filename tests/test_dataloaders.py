"""data/dataloaders.py: the DataLoaders' batch-size cap, shuffling and sharding."""

from __future__ import annotations

import pytest
import torch


def test_a_batch_exactly_as_large_as_the_split_is_kept_without_a_warning():
    import warnings

    from data.dataloaders import capped_batch_size

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert capped_batch_size(10, 10, 1) == 10 and capped_batch_size(20, 10, 2) == 10
    with pytest.warns(UserWarning, match="using batch_size 9"):
        assert capped_batch_size(9, 10, 1) == 9


def test_the_distributed_train_loader_shuffles_its_shard(monkeypatch):
    import torch.distributed as dist

    from data.dataloaders import train_loader
    from utils.runtime import Runtime

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    loader = train_loader(list(range(41)), 4, 0, Runtime(torch.device("cpu"), rank=0, world_size=2))
    assert len(loader.sampler) == 20  # 41 items: each of 2 processes gets 20, none a padded repeat
    seen = [int(x) for batch in loader for x in batch]
    assert len(seen) == 20 and len(set(seen)) == 20
    assert seen != list(range(0, 40, 2))  # unshuffled, rank 0 of 2 would get 0, 2, 4, ...
