"""Crash-safe files: every file a run writes appears whole or not at all (temporary file in the same folder,
fsync, rename); a failed write leaves the previous file untouched and says so."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from utils.errors import UserError

_HOST = socket.gethostname()


class WriteError(UserError, OSError):
    """A file could not be written (disk full, folder not writable, ...); the previous version is intact."""


def _os_error_behind(error: BaseException | None) -> OSError | None:
    """The OSError in `error`'s chain: torch.save reports a full disk as a RuntimeError raised while handling it."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _write_error(path: Path, error: OSError, existed: bool) -> WriteError:
    reason = error.strerror or str(error)
    kept = f"The previous {path.name} is unchanged." if existed else "Nothing was written."
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"Free disk space in {path.parent} (or point root_dir elsewhere) and rerun: stages resume."
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "Choose an output folder you can write to (root_dir in configs/env.yml, or --output / --output_dir)."
    else:
        hint = "Check the folder and the disk, then rerun: stages resume from their last checkpoint."
    failure = WriteError(f"Could not write {path}: {reason}. {kept} {hint}")
    failure.errno = error.errno
    return failure


def _remove_stale_temporaries(path: Path, prefix: str) -> None:
    """Delete the temporary files of `path` that writers of this host left when killed (their pid no longer runs)."""
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        pid = stale.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale.unlink(missing_ok=True)
            except OSError:
                pass  # the process runs, as another user: its file is being written


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[io.IOBase]:
    """Open `.<name>.<host>-<pid>.tmp` beside `path` for writing; on success it is fsync'ed and renamed over `path`.

    One temporary file per writer (every torchrun process may write the same split.json); open() gives it the
    umask's usual mode. On any failure the temporary file is removed and `path` keeps its previous content; an
    operating-system error becomes a WriteError that says what happened and what to do.
    """
    path, prefix = Path(path), f".{Path(path).name}.{_HOST}-"
    tmp, existed = path.with_name(f"{prefix}{os.getpid()}.tmp"), path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path, prefix)
        with open(tmp, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename is durable once the folder is synced, where it can be
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except Exception as error:
        tmp.unlink(missing_ok=True)
        cause = _os_error_behind(error)
        if cause is None or isinstance(error, WriteError):
            raise
        raise _write_error(path, cause, existed) from error


def write_json(obj: object, path: str | Path) -> None:
    """Indented JSON, written atomically so that a reader never sees half a file."""
    with atomic_write(path, "w") as file:
        json.dump(obj, file, indent=2)
        file.write("\n")


def write_summary(summary: object, markdown: str, folder: str | Path) -> None:
    """A bench's result as `summary.json` (every number) and `summary.md` (its table), and the table on stdout."""
    write_json(summary, Path(folder) / "summary.json")
    with atomic_write(Path(folder) / "summary.md", "w") as file:
        file.write(markdown)
    print(markdown, flush=True)


def save_numpy(array: np.ndarray, path: str | Path) -> None:
    """np.save, atomically (the neighbour files every later stage reads)."""
    with atomic_write(path, "wb") as file:
        np.save(file, array)


def check_writable(folder: str | Path) -> None:
    """Create `folder` and a file in it, or fail now with a WriteError instead of after hours of training."""
    folder = Path(folder)
    probe = folder / ".write-test"
    try:
        with atomic_write(probe, "wb"):
            pass
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
