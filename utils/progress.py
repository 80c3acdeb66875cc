"""Progress: a bar on a terminal, a plain line every minute elsewhere.

A bar redrawn in place is useful on a screen but fills a log file with thousands of carriage-return fragments
(`python simclr.py ... > train.log 2>&1`, a batch scheduler, nohup). Yet one line per epoch leaves such a log
silent for the many minutes an ImageNet epoch takes. So every loop of the project takes its progress from
here: on a terminal a tqdm bar, otherwise a plain line every SCAN_PROGRESS_SECONDS seconds (default 60):

    epoch 3: 120/500 batches, 850 images/s, loss 1.2345, ETA 7m27s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm as _tqdm


def on_terminal(stream=None) -> bool:
    """True when `stream` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_seconds() -> float:
    """Seconds between plain progress lines: SCAN_PROGRESS_SECONDS, default 60."""
    value = os.environ.get("SCAN_PROGRESS_SECONDS", "60")
    try:
        return max(float(value), 0.0)
    except ValueError:
        raise ValueError(f"SCAN_PROGRESS_SECONDS must be a number of seconds, not {value!r}.") from None


def batch_images(batch) -> int:
    """How many images a batch holds: the length of its first tensor-like entry (1 for anything else)."""
    first = next(iter(batch.values()), None) if isinstance(batch, dict) else batch
    if isinstance(first, (list, tuple)) and first and hasattr(first[0], "shape"):
        first = first[0]
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 1


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class PlainProgress:
    """What a bar would show, as one plain line every `every` seconds (iterations, images/s, postfix, ETA)."""

    def __init__(self, iterable: Iterable, desc: str | None, total: int | None, every: float) -> None:
        self.iterable, self.desc, self.every = iterable, desc or "progress", every
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.postfix = total, {}

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        images = 0
        for step, item in enumerate(self.iterable, 1):
            yield item
            images += batch_images(item)
            now = time.monotonic()
            if now - last >= self.every:
                last = now
                print(self.line(step, images, now - start), flush=True)

    def line(self, step: int, images: int, elapsed: float) -> str:
        parts = [f"{step}/{self.total} batches" if self.total else f"{step} batches"]
        parts.append(f"{images / max(elapsed, 1e-9):.0f} images/s")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        if self.total:
            parts.append(f"ETA {duration(elapsed / step * (self.total - step))}")
        return f"{self.desc}: {', '.join(parts)}"


def tqdm(iterable=None, *args, disable: bool = False, **kwargs):
    """A tqdm bar on a terminal; elsewhere (a log file) plain lines every progress_seconds(); nothing if disabled."""
    if disable or on_terminal(kwargs.get("file")):
        return _tqdm(iterable, *args, disable=disable, **kwargs)
    return PlainProgress(iterable, kwargs.get("desc"), kwargs.get("total"), progress_seconds())
