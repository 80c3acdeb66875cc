"""Training curves: one JSON line per epoch in `history.jsonl` (readable without this code, e.g.
pandas.read_json(lines=True)), redrawn as `curves.png`, and TensorBoard when asked (imported only then)."""

from __future__ import annotations

import atexit
import io
import json
import math
import time
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from utils.files import atomic_write

HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"

# Which logged values share a panel of curves.png; any other numeric value gets a panel of its own.
PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "total", "consistency", "entropy", "val_loss"),
    "learning rate": ("lr",),
    "accuracy (test split)": ("knn_top1", "ACC"),
    "confident fraction (self-label)": ("confident_fraction",),
    "skipped batches (self-label)": ("skipped_batches",),
    "seconds per epoch": ("time_s",),
}
NOT_PLOTTED = ("epoch", "head")
DRAW_BUDGET = 20  # redraw curves.png when at least 20× the last drawing's time has passed (<= ~5 % overhead)


def read_history(path: str | Path) -> list[dict]:
    """The records of a history.jsonl; [] when there is none. A line cut short by a crash is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _write_atomic(data: bytes, path: Path) -> None:
    with atomic_write(path, "wb") as file:
        file.write(data)


def _panels(records: list[dict]) -> dict[str, list[str]]:
    """Panel title → the keys with at least one number in `records`, in PANELS order, then the rest."""
    present = [
        key
        for key in dict.fromkeys(key for record in records for key in record)
        if key not in NOT_PLOTTED
        and any(isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool) for r in records)
    ]
    panels = {title: [key for key in keys if key in present] for title, keys in PANELS.items()}
    grouped = {key for keys in PANELS.values() for key in keys}
    panels.update({key: [key] for key in present if key not in grouped})
    return {title: keys for title, keys in panels.items() if keys}


def plot_history(records: list[dict], title: str = "") -> bytes:
    """curves.png's bytes: one small panel per group of values against the epoch."""
    panels = _panels(records)
    columns = min(3, max(len(panels), 1))
    rows = max(1, math.ceil(len(panels) / columns))
    # A bare Figure (no pyplot): no GUI backend, no global figure list, and fixed margins instead of
    # tight_layout, which would double the time of a redraw that happens every epoch.
    header, height = 0.5, 2.6 * rows + 0.3 * (rows - 1) + 0.5  # inches: title band, panels + gaps + x labels
    fig = Figure(figsize=(4.0 * columns, header + height))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (panel, keys) in zip(axes.flat, panels.items()):
        ax.axis("on")
        for key in keys:
            points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        first, last = min(r["epoch"] for r in records), max(r["epoch"] for r in records)
        if last - first < 2:  # one or two epochs: whole-number ticks need some room around the points
            ax.set_xlim(first - 1, last + 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.text(0.01, 1 - 0.15 / fig.get_figheight(), title, fontsize=11, weight="bold", va="top")
    total = fig.get_figheight()
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.45 / total, top=1 - (header + 0.1) / total, hspace=0.45, wspace=0.28
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


class History:
    """Per-epoch log of one stage in `out_dir`: history.jsonl, curves.png and optionally TensorBoard events.

    Lines of epochs after `start_epoch` (the resumed checkpoint's) are dropped, so a resumed run has each epoch
    once; `enabled=False` (non-main processes) makes every call a no-op; `time_s` runs from `log` to `log`,
    evaluation included. curves.png is redrawn after the first and last epoch and whenever DRAW_BUDGET times the
    last drawing's time has passed: at most ~5 % of a CPU demo, every epoch for minute-long epochs.
    """

    def __init__(
        self,
        out_dir: str | Path,
        start_epoch: int = 0,
        epochs: int | None = None,
        tensorboard: bool = False,
        enabled: bool = True,
    ) -> None:
        self.enabled, self.epochs = enabled, epochs
        self.last_drawn, self.draw_seconds = None, 0.0
        self.writer = None
        if not enabled:
            return
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / HISTORY_FILE
        self.records = [r for r in read_history(self.path) if r.get("epoch", math.inf) <= start_epoch]
        _write_atomic("".join(json.dumps(r) + "\n" for r in self.records).encode(), self.path)
        if tensorboard:
            self.writer = self._tensorboard_writer(start_epoch)
        self.last_time = time.perf_counter()

    def _tensorboard_writer(self, start_epoch: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "tensorboard: true needs the tensorboard package: pip install -r requirements-extra.txt "
                "(or set tensorboard: false)."
            ) from error
        # purge_step drops events of epochs after the checkpoint, as the JSON lines are dropped.
        writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)
        atexit.register(writer.close)  # stages end without a close(): the events are flushed every epoch anyway
        return writer

    def log(self, epoch: int, **values: float | int | list | None) -> dict:
        """Append the record of `epoch` (1-based) and redraw curves.png; None values are kept as null, lists are
        logged but not drawn."""
        if not self.enabled:
            return {}
        now = time.perf_counter()
        record = {"epoch": epoch, **values, "time_s": round(now - self.last_time, 3)}
        self.last_time = now
        self.records.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        final = self.epochs is not None and epoch >= self.epochs
        if self.last_drawn is None or final or now - self.last_drawn >= DRAW_BUDGET * self.draw_seconds:
            _write_atomic(plot_history(self.records, title=self.out_dir.name), self.out_dir / CURVES_FILE)
            self.last_drawn = time.perf_counter()
            self.draw_seconds = self.last_drawn - now
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()
        return record
