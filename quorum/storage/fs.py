"""The file-system seam of the storage layer.

Storage code never calls ``os`` for data files directly: it goes through a :class:`FileSystem`.
Production passes :class:`OsFileSystem`; tests and the simulator pass
:class:`quorum.storage.simfs.SimFileSystem`, which models what a power loss does to data that
was written but not yet fsynced.

Errors are reported the way the OS reports them: ``OSError`` with an ``errno`` (``ENOSPC``,
``EIO``, ``ENOENT``). Translating them into quorum's error tree is the caller's job, because
only the caller knows whether a failure is fatal (see ``quorum.storage.wal``).
"""

from __future__ import annotations

import abc
import errno
import os
from collections.abc import Callable
from typing import TypeVar

from quorum.errors import DiskFullError, FatalIOError

T = TypeVar("T")


def run_io(action: Callable[[], T], during: str = "") -> T:
    """Run an I/O action, reporting OSError in the storage error tree: DiskFullError for a
    full disk, FatalIOError otherwise (``during`` says when, e.g. " while opening the WAL")."""
    try:
        return action()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full{during}: {exc}") from exc
        raise FatalIOError(f"I/O error{during}: {exc}") from exc


class FileHandle(abc.ABC):
    """An open file, read and written at explicit offsets (no hidden file position)."""

    @abc.abstractmethod
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``. Raises OSError; a partial write may remain."""

    @abc.abstractmethod
    def pread(self, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset`` (fewer at end of file)."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make written data durable (fdatasync). Raises OSError (EIO): the caller must stop."""

    @abc.abstractmethod
    def truncate(self, size: int) -> None: ...

    @abc.abstractmethod
    def size(self) -> int: ...

    def preallocate(self, size: int) -> None:  # noqa: B027 - optional, default does nothing
        """Reserve space up to ``size`` bytes without changing the visible size, if supported."""

    @abc.abstractmethod
    def close(self) -> None: ...


class FileSystem(abc.ABC):
    """Path-level operations. Directory changes are durable only after :meth:`fsync_dir`."""

    @abc.abstractmethod
    def open(self, path: str, create: bool = False) -> FileHandle:
        """Open for reading and writing; ``create`` makes an empty file if it is missing."""

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create ``path`` and missing parents; an existing directory is fine."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src`` (same directory)."""

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def fsync_dir(self, path: str) -> None:
        """Make creates, renames and removes inside directory ``path`` durable."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def size(self, path: str) -> int: ...

    def truncate(self, path: str, size: int) -> None:
        handle = self.open(path)
        try:
            handle.truncate(size)
        finally:
            handle.close()


# --- the real thing ----------------------------------------------------------------------------


class _OsFile(FileHandle):
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:  # os.pwrite may write less than asked; loop until done or OSError
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def preallocate(self, size: int) -> None:
        # FALLOC_FL_KEEP_SIZE is not exposed by the os module; posix_fallocate extends the
        # visible size, which the WAL tolerates (a zero-filled tail reads as "end of log").
        os.posix_fallocate(self._fd, 0, size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem(FileSystem):
    """Real files through ``os`` calls."""

    def open(self, path: str, create: bool = False) -> FileHandle:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        return _OsFile(os.open(path, flags, 0o644))

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def mkdir(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)
