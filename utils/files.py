"""Crash-safe files: every file a run writes appears whole or not at all (temporary file in the same folder,
fsync, rename, fsync of the folder); a failed write leaves the previous file untouched and says so."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from utils.errors import UserError

_HOST = socket.gethostname()


class WriteError(UserError, OSError):
    """A file could not be written (disk full, folder not writable, ...); the previous version is intact."""


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


def _temporary_prefix(path: Path) -> str:
    """`.<name>.<host>-<pid>.`: names the writer, so a later write can remove what a killed one left."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of `path` left by killed processes of this host (their pid no longer runs)."""
    for stale in path.parent.glob(f".{path.name}.{_HOST}-*.tmp"):
        pid = stale.name[len(f".{path.name}.{_HOST}-") :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:
            pass  # the process exists (owned by someone else): leave its file alone


def _os_error_behind(error: BaseException) -> OSError | None:
    """The operating-system error behind `error`: torch.save reports a full disk as a RuntimeError raised
    while handling the OSError, so the chain of causes is searched."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable. Some filesystems cannot fsync a folder; the file itself is already safe."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[io.IOBase]:
    """Open a temporary file beside `path` for writing; on success it replaces `path` durably.

    On any failure the temporary file is removed and `path` keeps its previous content; operating-system
    errors become a WriteError that says what happened and what to do.
    """
    path = Path(path)
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
        # mkstemp creates the file private (0600); give it what open(path, "w") would, so colleagues can read it.
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except Exception as error:
        cause = _os_error_behind(error)
        if cause is None or isinstance(error, WriteError):
            raise
        raise _write_error(path, cause, existed) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


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
