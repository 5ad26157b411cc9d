"""Durable file writes, one way for every writer (PKI files, checkpoints, ledgers, node state,
reports and exported folders).

``write_atomic`` writes a temporary file in the same directory, flushes and fsyncs it, renames it
over the target with ``os.replace`` and fsyncs the directory. A reader sees the old file or the
new one, never half of one; once the call returns, a crash or power cut cannot lose the write. The
temporary file is created 0600 (``mkstemp``) and only then given its final mode, so a private
key is never readable by others, not even briefly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the directory's entries (renames, creations, removals) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(directory: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``directory`` (itself included): for a folder written
    in a staging place and then renamed into view, so that what appears is all on disk."""
    root = Path(directory)
    for folder, _subfolders, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = PUBLIC,
    temp_prefix: str | None = None,
    temp_suffix: str = ".tmp",
    sync_directory: bool = True,
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``temp_prefix``/``temp_suffix`` name the temporary file (default ``.NAME.`` + random +
    ``.tmp``), so that a cleaner can recognise leftovers of a crash. ``sync_directory=False``
    leaves the directory fsync to the caller, who writes several files and syncs once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix if temp_prefix is not None else f".{path.name}."
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=temp_suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int = PUBLIC) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(path, text.encode("utf-8"), mode=mode)


def probe_writable_directory(directory: str | os.PathLike[str]) -> Path:
    """Create and remove a file in ``directory`` -- or, if it is still to be made, in its nearest
    existing parent -- and return where: an OSError now, before minutes of work, rather than when
    the results are to be written. Nothing is left behind."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():  # a file where a directory has to be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
        pass
    return existing
