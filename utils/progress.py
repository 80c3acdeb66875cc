"""Progress: a tqdm bar on a terminal; in a log file (`> train.log`, nohup, a batch scheduler), where a redrawn bar
leaves carriage-return fragments, a plain line every SCAN_PROGRESS_SECONDS seconds (default 60):

    epoch 3: 120/500 batches, 850 images/s, loss 1.2345, ETA 7m27s
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm as _tqdm


def batch_images(batch) -> int:
    """How many images a batch holds: the length of its first tensor-like entry (1 for anything else)."""
    first = next(iter(batch.values()), None) if isinstance(batch, dict) else batch
    if isinstance(first, (list, tuple)) and first and hasattr(first[0], "shape"):
        first = first[0]
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 1


class PlainProgress:
    """What a bar would show, as one plain line every `every` seconds (iterations, images/s, postfix, ETA)."""

    def __init__(self, iterable: Iterable, desc: str | None, total: int | None, every: float) -> None:
        self.iterable, self.desc, self.every, self.postfix = iterable, desc or "progress", every, {}
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total

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
            if (now := time.monotonic()) - last >= self.every:
                last = now
                print(self.line(step, images, now - start), flush=True)

    def line(self, step: int, images: int, elapsed: float) -> str:
        parts = [f"{step}/{self.total} batches" if self.total else f"{step} batches"]
        parts.append(f"{images / max(elapsed, 1e-9):.0f} images/s")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        if self.total:
            minutes, seconds = divmod(int(elapsed / step * (self.total - step)), 60)
            parts.append(
                f"ETA {minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"ETA {minutes}m{seconds:02d}s"
            )
        return f"{self.desc}: {', '.join(parts)}"


def tqdm(iterable=None, *args, disable: bool = False, **kwargs):
    """A tqdm bar on a terminal (`file`, default stderr); elsewhere plain lines; nothing if disabled."""
    stream = kwargs.get("file") or sys.stderr
    if disable or (not getattr(stream, "closed", False) and stream.isatty()):
        return _tqdm(iterable, *args, disable=disable, **kwargs)
    value = os.environ.get("SCAN_PROGRESS_SECONDS", "60")
    try:
        every = max(float(value), 0.0)
    except ValueError:
        raise ValueError(f"SCAN_PROGRESS_SECONDS must be a number of seconds, not {value!r}.") from None
    return PlainProgress(iterable, kwargs.get("desc"), kwargs.get("total"), every)
