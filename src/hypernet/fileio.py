"""Atomic file writes: a crash never leaves a half-written file where the user's file was."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path`` for binary writing; on success fsync it and rename it over ``path``.

    On any exception the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, _final_mode(target))  # mkstemp makes 0600; the result should look like any file the user saves
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[BinaryIO], None]) -> None:
    """Call ``writer(fileobj)`` on a temp file and atomically move the result to ``path``."""
    with atomic_open(path) as fh:
        writer(fh)


def _final_mode(target: Path) -> int:
    """The replaced file's permissions, or the default for new files under the process umask."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform (e.g. Windows).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Full sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's short hash: the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]


def next_number(folder: str | os.PathLike[str], prefixes: tuple[str, ...] = ()) -> int:
    """The number for the next output in ``folder``: one above the highest ``NNNNN-`` prefix there (0 if none);
    names may start with one of ``prefixes`` before the number (the X/Y/Z plot's ``xyz_grid-NNNNN.png``).

    A1111 numbers images on from what a folder holds; taking max + 1 rather than counting files means a deleted
    file in the middle never makes a new image overwrite an old one. The CLI, the grid and the server all use it.
    """
    highest = -1
    root = Path(folder)
    if root.is_dir():
        for entry in root.iterdir():
            name = next((entry.name[len(p):] for p in prefixes if entry.name.startswith(p)), entry.name)
            prefix = name.split("-", 1)[0].split(".", 1)[0]
            if prefix.isdigit():
                highest = max(highest, int(prefix))
    return highest + 1
