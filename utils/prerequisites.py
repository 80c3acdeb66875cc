"""A stage's inputs are the files an earlier stage wrote: check them first and name the command that writes them."""

from __future__ import annotations

from pathlib import Path

from utils.errors import UserError


class MissingPrerequisiteError(UserError, FileNotFoundError):
    """A stage was started before the stage it builds on has written its files."""


def require_files(paths: list[str], command: str) -> None:
    """Fail early, naming the missing files and the command that makes them."""
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise MissingPrerequisiteError(
            "Missing input file(s):\n  " + "\n  ".join(missing) + f"\nThey are written by:\n  {command}"
        )
