"""Readable result files: JSON written atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json(obj: object, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        json.dump(obj, file, indent=2)
        file.write("\n")
    os.replace(tmp, path)
