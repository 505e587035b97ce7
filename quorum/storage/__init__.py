"""Durable Raft state: a checksummed segmented WAL, snapshot files, crash-safe recovery.

Everything touches disk through a :class:`FileSystem` (``OsFileSystem`` in production,
``SimFileSystem`` in tests and the simulator). See docs/storage.md.
"""

from quorum.storage.durable import ENTRY_OVERHEAD_BYTES, DurableStorage, StorageOptions
from quorum.storage.fs import FileHandle, FileSystem, OsFileSystem
from quorum.storage.simfs import SimFileSystem, SimulatedCrash

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "DurableStorage",
    "FileHandle",
    "FileSystem",
    "OsFileSystem",
    "SimFileSystem",
    "SimulatedCrash",
    "StorageOptions",
]
