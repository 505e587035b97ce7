"""An in-memory, deterministic, fault-injecting :class:`FileSystem`.

Fault model (what :meth:`SimFileSystem.crash` and the injection switches do):

- **Unsynced data.** Every file keeps its *durable* image (as of its last ``sync``) and the list
  of writes/truncates made since. A crash keeps the durable image and, with ``torn=True``, a
  random prefix of the pending operations cut at 512-byte sector granularity; the last
  surviving sector may be zeroed or filled with garbage. With ``torn=False`` all unsynced data
  is lost.
- **Unsynced directory entries.** Creates, renames and removes are durable only after
  ``fsync_dir`` of their directory. A crash keeps the durable namespace plus (with ``torn=True``)
  a random prefix of the pending directory operations, in order; a rename is one atomic
  operation.
- **Bit flips** at a path/offset (:meth:`flip_bit`), applied to both the live and the durable
  image (media corruption, not a torn write).
- **ENOSPC** once the total size of all files would exceed ``capacity_bytes``: the bytes that fit
  are written, then ``OSError(ENOSPC)``.
- **EIO** on the n-th write or n-th fsync (:meth:`fail_write_at`, :meth:`fail_sync_at`).
- **Slow fsync**: ``on_sync`` is called with the path at every file sync, so a simulator can
  advance its virtual clock; nothing here sleeps.
- **Crash points**: ``crash_at_event`` makes the n-th persistence event (write, sync, truncate,
  create, rename, remove, fsync_dir) raise :class:`SimulatedCrash`, either before the event takes
  effect or (``crash_after=True``) right after. Tests then call :meth:`crash` and reopen.

All randomness comes from the ``random.Random`` passed in, so a run is a function of its seed.
"""

from __future__ import annotations

import errno
import posixpath
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from quorum.storage.fs import FileHandle, FileSystem

SECTOR_BYTES = 512


class SimulatedCrash(BaseException):
    """Raised at an injected crash point; the test then calls ``SimFileSystem.crash()``.

    A BaseException so that storage code's ``except Exception`` cleanup cannot swallow it, and
    after it every operation raises it again until ``crash()``: a crashed process runs no
    more code, so no cleanup may reach the disk."""


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    # pending ops since the last sync: ("w", offset, bytes) or ("t", size, b"")
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class _DirOp:
    kind: str  # "link" (create), "unlink" (remove) or "rename" (atomic: link name, unlink src)
    name: str
    inode: _Inode | None
    src: str = ""


class _SimFile(FileHandle):
    def __init__(self, fs: SimFileSystem, path: str, inode: _Inode) -> None:
        self._fs = fs
        self._path = path
        self._inode = inode
        self._generation = fs.generation

    def _check(self) -> None:
        self._fs._check_alive()
        if self._generation != self._fs.generation or self._inode is None:
            raise OSError(errno.EBADF, "file handle closed or invalidated by a crash", self._path)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._check()
        self._fs._write(self._path, self._inode, bytes(data), offset)

    def pread(self, size: int, offset: int) -> bytes:
        self._check()
        return bytes(self._inode.data[offset : offset + size])

    def sync(self) -> None:
        self._check()
        self._fs._sync(self._path, self._inode)

    def truncate(self, size: int) -> None:
        self._check()
        self._fs._truncate(self._path, self._inode, size)

    def size(self) -> int:
        self._check()
        return len(self._inode.data)

    def preallocate(self, size: int) -> None:
        """Like posix_fallocate: the file grows to ``size`` reading as zeros; the new size is
        durable only after a sync (a zero write, subject to capacity and crashes)."""
        self._check()
        if size > len(self._inode.data):
            current = len(self._inode.data)
            self._fs._write(self._path, self._inode, bytes(size - current), current)

    def close(self) -> None:
        self._generation = -1


class SimFileSystem(FileSystem):
    """See the module docstring for the fault model."""

    def __init__(self, rng: random.Random, capacity_bytes: int | None = None) -> None:
        self.rng = rng
        self.capacity_bytes = capacity_bytes
        self.generation = 0  # bumped by crash(): open handles become invalid
        self._files: dict[str, _Inode] = {}
        self._durable_files: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._pending_dir_ops: dict[str, list[_DirOp]] = {}
        # counters and switches
        self.events = 0
        self.event_kinds: Counter[str] = Counter()
        self.write_count = 0
        self.sync_count = 0
        self.dir_sync_count = 0
        self.crash_at_event: int | None = None
        self.crash_after = False
        self.on_sync: Callable[[str], None] | None = None
        # injected EIO: [remaining matching calls, path substring]
        self._write_fault: list[int | str] | None = None
        self._sync_fault: list[int | str] | None = None
        self._crashed = False

    # --- injection ----------------------------------------------------------------------------

    def fail_write_at(self, nth: int, path_contains: str = "") -> None:
        """The ``nth`` write from now (1 = the next one) to a path containing
        ``path_contains`` fails with EIO and writes nothing."""
        self._write_fault = [nth, path_contains]

    def fail_sync_at(self, nth: int, path_contains: str = "") -> None:
        """The ``nth`` file sync from now of a path containing ``path_contains`` fails with
        EIO; its data stays unsynced."""
        self._sync_fault = [nth, path_contains]

    @staticmethod
    def _fault_fires(fault: list[int | str] | None, path: str) -> bool:
        if fault is None or str(fault[1]) not in path:
            return False
        fault[0] = int(fault[0]) - 1
        return fault[0] == 0

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Flip one bit in the live and durable image of ``path`` (media corruption)."""
        inode = self._files[self._norm(path)]
        inode.data[offset] ^= 1 << bit
        if offset < len(inode.durable):
            durable = bytearray(inode.durable)
            durable[offset] ^= 1 << bit
            inode.durable = bytes(durable)

    def used_bytes(self) -> int:
        return sum(len(inode.data) for inode in self._files.values())

    # --- crash --------------------------------------------------------------------------------

    def crash(self, torn: bool = True) -> None:
        """Lose what was not made durable (see module docstring) and invalidate open handles."""
        self.generation += 1
        self._crashed = False
        self.crash_at_event = None
        self._write_fault = self._sync_fault = None
        namespace = dict(self._durable_files)
        for ops in self._pending_dir_ops.values():
            keep = self.rng.randint(0, len(ops)) if torn else 0
            for op in ops[:keep]:
                _apply_dir_op(namespace, op)
        self._pending_dir_ops.clear()
        for inode in {id(i): i for i in [*self._files.values(), *namespace.values()]}.values():
            self._crash_inode(inode, torn)
        self._files = namespace
        self._durable_files = dict(namespace)

    def _crash_inode(self, inode: _Inode, torn: bool) -> None:
        image = bytearray(inode.durable)
        if torn and inode.pending:
            pieces = [p for op in inode.pending for p in _sector_pieces(op)]
            keep = self.rng.randint(0, len(pieces))
            for kind, offset, data in pieces[:keep]:
                _apply_op(image, kind, offset, data)
            if keep and pieces[keep - 1][0] == "w" and self.rng.random() < 0.3:
                _, offset, data = pieces[keep - 1]
                filler = bytes(len(data)) if self.rng.random() < 0.5 else self.rng.randbytes(len(data))
                _apply_op(image, "w", offset, filler)  # the last sector reached the disk mangled
        inode.data = image
        inode.durable = bytes(image)
        inode.pending = []

    # --- event accounting ---------------------------------------------------------------------

    def _event(self, kind: str) -> None:
        """Count one persistence event; raise SimulatedCrash before it if so configured."""
        self._check_alive()
        self.events += 1
        self.event_kinds[kind] += 1
        if self.crash_at_event == self.events and not self.crash_after:
            self._crashed = True
            raise SimulatedCrash(f"crash before event {self.events}")

    def _after_event(self) -> None:
        if self.crash_at_event == self.events and self.crash_after:
            self._crashed = True
            raise SimulatedCrash(f"crash after event {self.events}")

    def _check_alive(self) -> None:
        if self._crashed:
            raise SimulatedCrash("the process has crashed; call crash() first")

    # --- file data ----------------------------------------------------------------------------

    def _write(self, path: str, inode: _Inode, data: bytes, offset: int) -> None:
        self._event("write")
        self.write_count += 1
        if self._fault_fires(self._write_fault, path):
            raise OSError(errno.EIO, "injected write error", path)
        growth = max(0, offset + len(data) - len(inode.data))
        if self.capacity_bytes is not None and self.used_bytes() + growth > self.capacity_bytes:
            room = max(0, self.capacity_bytes - self.used_bytes())
            fits = max(0, len(inode.data) - offset) + room
            if fits > 0:
                self._apply_write(inode, data[:fits], offset)
            raise OSError(errno.ENOSPC, "no space left on device (simulated)", path)
        self._apply_write(inode, data, offset)
        self._after_event()

    def _apply_write(self, inode: _Inode, data: bytes, offset: int) -> None:
        _apply_op(inode.data, "w", offset, data)
        inode.pending.append(("w", offset, data))

    def _sync(self, path: str, inode: _Inode) -> None:
        self._event("sync")
        self.sync_count += 1
        if self.on_sync is not None:
            self.on_sync(path)
        if self._fault_fires(self._sync_fault, path):
            raise OSError(errno.EIO, "injected fsync error", path)
        inode.durable = bytes(inode.data)
        inode.pending = []
        self._after_event()

    def _truncate(self, path: str, inode: _Inode, size: int) -> None:
        self._event("truncate")
        _apply_op(inode.data, "t", size, b"")
        inode.pending.append(("t", size, b""))
        self._after_event()

    # --- FileSystem -----------------------------------------------------------------------------

    @staticmethod
    def _norm(path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def _dir_of(self, path: str) -> str:
        parent = posixpath.dirname(path)
        if parent not in self._dirs:
            raise OSError(errno.ENOENT, "no such directory", parent)
        return parent

    def _dir_op(self, path: str, op: _DirOp) -> None:
        _apply_dir_op(self._files, op)
        self._pending_dir_ops.setdefault(self._dir_of(path), []).append(op)

    def open(self, path: str, create: bool = False) -> FileHandle:
        self._check_alive()
        path = self._norm(path)
        inode = self._files.get(path)
        if inode is None:
            if not create:
                raise OSError(errno.ENOENT, "no such file", path)
            self._dir_of(path)
            self._event("create")
            inode = _Inode()
            self._dir_op(path, _DirOp("link", path, inode))
            self._after_event()
        return _SimFile(self, path, inode)

    def read_file(self, path: str) -> bytes:
        self._check_alive()
        path = self._norm(path)
        if path not in self._files:
            raise OSError(errno.ENOENT, "no such file", path)
        return bytes(self._files[path].data)

    def listdir(self, path: str) -> list[str]:
        self._check_alive()
        path = self._norm(path)
        if path not in self._dirs:
            raise OSError(errno.ENOENT, "no such directory", path)
        names = [posixpath.basename(p) for p in self._files if posixpath.dirname(p) == path]
        names += [posixpath.basename(d) for d in self._dirs if d != "/" and posixpath.dirname(d) == path]
        return sorted(names)

    def mkdir(self, path: str) -> None:
        # Directories themselves are modelled as always durable: the storage layer creates
        # them once at startup and fsyncs their parent, and no test needs to lose one.
        path = self._norm(path)
        while path not in self._dirs:
            self._dirs.add(path)
            path = posixpath.dirname(path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = self._norm(src), self._norm(dst)
        inode = self._files.get(src)
        if inode is None:
            raise OSError(errno.ENOENT, "no such file", src)
        self._event("rename")
        # One operation: a rename is atomic in the file system's journal, so a crash shows
        # either the old or the new name, never both or neither.
        self._dir_op(dst, _DirOp("rename", dst, inode, src))
        self._after_event()

    def remove(self, path: str) -> None:
        path = self._norm(path)
        if path not in self._files:
            raise OSError(errno.ENOENT, "no such file", path)
        self._event("remove")
        self._dir_op(path, _DirOp("unlink", path, None))
        self._after_event()

    def fsync_dir(self, path: str) -> None:
        path = self._norm(path)
        self._event("fsync_dir")
        self.dir_sync_count += 1
        for op in self._pending_dir_ops.pop(path, []):
            _apply_dir_op(self._durable_files, op)
        self._after_event()

    def exists(self, path: str) -> bool:
        self._check_alive()
        path = self._norm(path)
        return path in self._files or path in self._dirs

    def size(self, path: str) -> int:
        self._check_alive()
        path = self._norm(path)
        if path not in self._files:
            raise OSError(errno.ENOENT, "no such file", path)
        return len(self._files[path].data)


def _apply_dir_op(namespace: dict[str, _Inode], op: _DirOp) -> None:
    if op.kind in ("link", "rename"):
        assert op.inode is not None
        namespace[op.name] = op.inode
        if op.kind == "rename":
            namespace.pop(op.src, None)
    else:
        namespace.pop(op.name, None)


def _apply_op(image: bytearray, kind: str, offset: int, data: bytes) -> None:
    if kind == "t":
        del image[offset:]
        return
    end = offset + len(data)
    if len(image) < offset:
        image.extend(bytes(offset - len(image)))
    image[offset:end] = data


def _sector_pieces(op: tuple[str, int, bytes]) -> list[tuple[str, int, bytes]]:
    """Split a write at sector boundaries: a crash may keep any prefix of the pieces."""
    kind, offset, data = op
    if kind != "w":
        return [op]
    pieces = []
    pos = 0
    while pos < len(data):
        boundary = ((offset + pos) // SECTOR_BYTES + 1) * SECTOR_BYTES
        take = min(len(data) - pos, boundary - (offset + pos))
        pieces.append(("w", offset + pos, data[pos : pos + take]))
        pos += take
    return pieces
