"""Progress bars that draw only on a terminal.

A bar redrawn in place is useful on a screen but fills a log file with thousands of carriage-return fragments
(`python simclr.py ... > train.log 2>&1`, a batch scheduler, nohup). Every loop of the project takes its bar
from here, so a log written to a file gets only the plain lines the scripts print (one per epoch).
"""

from __future__ import annotations

import sys

from tqdm import tqdm as _tqdm


def on_terminal(stream=None) -> bool:
    """True when `stream` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def tqdm(iterable=None, *args, disable: bool = False, **kwargs) -> _tqdm:
    """tqdm.tqdm, switched off (it still iterates) unless its output stream is a terminal."""
    return _tqdm(iterable, *args, disable=disable or not on_terminal(kwargs.get("file")), **kwargs)
