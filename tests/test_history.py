"""utils/history.py: one JSON line per epoch, curves.png, resume without duplicates, optional TensorBoard."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from utils.history import CURVES_FILE, HISTORY_FILE, History, _panels, read_history


def lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / HISTORY_FILE).read_text().splitlines()]


def test_one_line_per_epoch_and_a_curves_png(tmp_path):
    history = History(tmp_path, start_epoch=0)
    for epoch in (1, 2, 3):
        history.log(epoch, loss=1.0 / epoch, lr=0.1, ACC=None)
    records = lines(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == [1.0, 0.5, 1.0 / 3]
    assert all(r["ACC"] is None and r["lr"] == 0.1 and r["time_s"] >= 0 for r in records)
    with Image.open(tmp_path / CURVES_FILE) as image:
        assert image.format == "PNG" and image.width > 100


def test_resume_drops_the_epochs_after_the_checkpoint(tmp_path):
    history = History(tmp_path)
    for epoch in (1, 2, 3, 4):
        history.log(epoch, loss=float(epoch))
    # The run died after epoch 4 was logged but the checkpoint holds epoch 2: epochs 3 and 4 are redone.
    resumed = History(tmp_path, start_epoch=2)
    resumed.log(3, loss=30.0)
    assert [(r["epoch"], r["loss"]) for r in lines(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    History(tmp_path, start_epoch=0)  # a fresh run (no checkpoint) starts an empty history
    assert lines(tmp_path) == []


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path):
    (tmp_path / HISTORY_FILE).write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "lo')
    assert read_history(tmp_path / HISTORY_FILE) == [{"epoch": 1, "loss": 2.0}]
    History(tmp_path, start_epoch=2).log(3, loss=1.0)
    assert [r["epoch"] for r in lines(tmp_path)] == [1, 3]


def test_disabled_history_writes_nothing(tmp_path):
    History(tmp_path / "other", enabled=False).log(1, loss=1.0)
    assert not (tmp_path / "other").exists()


def test_panels_group_loss_parts_and_leave_out_values_that_are_never_numbers():
    records = [
        {"epoch": 1, "total": 3.0, "consistency": 1.0, "entropy": -2.0, "lr": 0.1, "ACC": None, "head": 0},
        {"epoch": 2, "total": 2.0, "consistency": 0.5, "entropy": -2.1, "lr": 0.1, "ACC": None, "head": 1},
    ]
    assert _panels(records) == {"loss": ["total", "consistency", "entropy"], "learning rate": ["lr"]}
    assert _panels([{"epoch": 1, "custom": 2.0}]) == {"custom": ["custom"]}


def test_tensorboard_events_hold_every_value_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional (requirements-extra.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = History(tmp_path, tensorboard=True)
    for epoch in (1, 2, 3):
        history.log(epoch, loss=float(epoch), ACC=None)
    history.writer.close()
    resumed = History(tmp_path, start_epoch=1, tensorboard=True)
    resumed.log(2, loss=20.0)
    resumed.writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "ACC" not in events.Tags()["scalars"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 20.0)]


def test_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ImportError, match="requirements-extra.txt"):
        History(tmp_path, tensorboard=True)


def test_curves_are_redrawn_when_cheap_enough_and_after_the_last_epoch(tmp_path, monkeypatch):
    """A fake clock: drawing takes 1 s; epochs of 2 s skip drawings, epochs of 30 s draw every time."""
    import utils.history as history_module

    clock, drawn = [0.0], []

    def fake_plot(records, title=""):
        clock[0] += 1.0
        drawn.append(records[-1]["epoch"])
        return b"png"

    monkeypatch.setattr(history_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(history_module, "plot_history", fake_plot)
    history = History(tmp_path / "fast", epochs=30)
    for epoch in range(1, 31):
        clock[0] += 2.0
        history.log(epoch, loss=1.0)
    # Drawn at 1, then each time >= 20 s have passed since the previous drawing ended (every 10th epoch), and at 30.
    assert drawn == [1, 11, 21, 30]
    assert len(lines(tmp_path / "fast")) == 30  # every epoch is logged all the same
    drawn.clear()
    history = History(tmp_path / "slow", epochs=3)
    for epoch in (1, 2, 3):
        clock[0] += 30.0
        history.log(epoch, loss=1.0)
    assert drawn == [1, 2, 3]


def test_selflabel_reports_the_fraction_of_confident_weak_views():
    """Rows of fixed logits: 3 of 4 have a max probability above 0.9 (a counted case)."""
    import torch

    import selflabel
    from losses import ConfidenceBasedCE
    from utils.runtime import Runtime

    logits = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [1.0, 1.0, 1.0]])

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return [logits + self.w]

    batch = {"image": torch.zeros(4, 3, 2, 2), "image_augmented": torch.zeros(4, 3, 2, 2)}
    model = Fixed()
    stats = selflabel.train_one_epoch(
        [batch, batch],
        model,
        ConfidenceBasedCE(0.9, False),
        torch.optim.SGD(model.parameters(), lr=0.0),
        None,
        Runtime(device=torch.device("cpu")),
        False,
        0,
    )
    assert stats["confident"] == 0.75 and stats["steps"] == 2 and stats["skipped"] == 0
