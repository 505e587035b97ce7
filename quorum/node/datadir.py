"""The data-format marker of a node's data directory: refuse data written by a newer quorum.

A newer release may write log entries, snapshots or state an older one cannot read. Older
code does not always fail on them: the release before batched entries skips each one as
undecodable and serves an empty store (docs/upgrade.md). So every start writes the format it
writes in ``<data_dir>/format`` and refuses a directory marked with a higher one, before the
storage's crash recovery touches anything.

Format history (directories written before the marker existed have no file):

1. format 1 state snapshots (up to ec25af5);
2. format 2 state snapshots, one proposal per log entry, peer protocol 1 (up to dedeab2);
3. several proposals per log entry (ProposalBatch), peer protocol 2;
4. UPDATE_NODE conf changes in the log (address records that name no role), peer protocol 3.

Raise DATA_FORMAT whenever a change writes something the previous release cannot read.
"""

from __future__ import annotations

import hashlib
import os
from typing import TypeVar

import msgspec

import quorum
from quorum.errors import CorruptionError, DataFormatTooNew
from quorum.storage.durable import DurableStorage, StorageOptions
from quorum.storage.fs import FileSystem, run_io

S = TypeVar("S", bound=msgspec.Struct)

DATA_FORMAT = 4
FORMAT_FILE = "format"
_WHERE = " on the data-format marker"  # for run_io's error messages


class DataFormat(msgspec.Struct, frozen=True):
    format: int
    written_by: str = ""  # the quorum version that last started on the directory


def read_format(fs: FileSystem, data_dir: str) -> DataFormat | None:
    """The directory's marker, or None (no directory, or one from before markers).
    Raises CorruptionError when the file is not a marker."""
    path = os.path.join(data_dir, FORMAT_FILE)
    marker = _read_json(fs, path, DataFormat, "data-format marker", _WHERE)
    if marker is None:
        return None
    if marker.format < 1:
        raise CorruptionError(f"data-format marker holds format {marker.format}", path, 0)
    return marker


def check_format(fs: FileSystem, data_dir: str) -> None:
    """Before opening the storage: raise DataFormatTooNew if a newer quorum wrote here."""
    marker = read_format(fs, data_dir)
    if marker is not None and marker.format > DATA_FORMAT:
        raise DataFormatTooNew(
            f"{data_dir} holds data format {marker.format} (written by quorum "
            f"{marker.written_by or '?'}); this quorum ({quorum.__version__}) reads formats up "
            f"to {DATA_FORMAT}: run the newer release, or restore a backup taken before the "
            f"upgrade")


def mark_format(fs: FileSystem, data_dir: str) -> None:
    """After opening (the directory exists): record this release's format, atomically (a
    crash leaves the old marker or the new one, never a torn file)."""
    marker = read_format(fs, data_dir)
    current = DataFormat(DATA_FORMAT, quorum.__version__)
    if marker == current:
        return
    path = os.path.join(data_dir, FORMAT_FILE)
    run_io(lambda: _replace(fs, data_dir, path, msgspec.json.encode(current) + b"\n"), _WHERE)


def _read_json(fs: FileSystem, path: str, kind: type[S], what: str, where: str) -> S | None:
    """The JSON struct in ``path``, or None if there is no file; CorruptionError if it does
    not decode (never replaced: the operator decides what it should hold)."""
    if not run_io(lambda: fs.exists(path), where):
        return None
    raw = run_io(lambda: fs.read_file(path), where)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"unreadable {what}: {exc}", path, 0) from None


def _replace(fs: FileSystem, data_dir: str, path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    handle = fs.open(tmp, create=True)
    try:
        handle.truncate(0)
        handle.pwrite(data, 0)
        handle.sync()
    finally:
        handle.close()
    fs.rename(tmp, path)
    fs.fsync_dir(data_dir)


def open_storage(fs: FileSystem, data_dir: str, options: StorageOptions) -> DurableStorage:
    """The node runtimes' way to open their storage: refuse a newer release's directory
    before crash recovery touches it, open, then mark the directory with this format."""
    check_format(fs, data_dir)
    durable = DurableStorage.open(fs, data_dir, options)
    mark_format(fs, data_dir)
    return durable


# --- the cluster id ------------------------------------------------------------------------------
#
# Members refuse a peer whose handshake names another cluster id (docs/transport.md), which
# separates clusters only if their ids differ. A new cluster's id is derived from its initial
# membership (ids and peer addresses: two clusters that could reach each other differ there),
# unless the operator gives one, and it is stored in the data directory at the first start, so
# restarts and later membership changes keep it. Directories from before the id was stored
# keep the one fixed id every cluster used then (LEGACY_CLUSTER_ID), so their clusters still
# agree. The file is separate from the format marker, which older releases rewrite.

CLUSTER_FILE = "cluster"
LEGACY_CLUSTER_ID = 0x51_55_4F_52  # "QUOR": the id of every cluster before ids were derived
_CLUSTER_WHERE = " on the cluster-id file"


class ClusterIdentity(msgspec.Struct, frozen=True):
    cluster_id: int


def derive_cluster_id(members: list[tuple[int, str]]) -> int:
    """A positive 63-bit id from (member id, peer address) pairs; the same on every member
    given the same initial cluster, whatever the order it was listed in."""
    text = "\n".join(f"{ident}={peer}" for ident, peer in sorted(members))
    digest = hashlib.sha256(b"quorum cluster id\n" + text.encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 1) or 1


def read_cluster_id(fs: FileSystem, data_dir: str) -> int | None:
    """The stored cluster id, or None (no file yet). Raises CorruptionError on a bad file."""
    path = os.path.join(data_dir, CLUSTER_FILE)
    ident = _read_json(fs, path, ClusterIdentity, "cluster-id file", _CLUSTER_WHERE)
    if ident is None:
        return None
    if ident.cluster_id <= 0:
        raise CorruptionError(f"cluster-id file holds {ident.cluster_id}", path, 0)
    return ident.cluster_id


def store_cluster_id(fs: FileSystem, data_dir: str, cluster_id: int) -> None:
    """Record the cluster id, atomically and durably (the directory must exist)."""
    path = os.path.join(data_dir, CLUSTER_FILE)
    data = msgspec.json.encode(ClusterIdentity(cluster_id)) + b"\n"
    run_io(lambda: _replace(fs, data_dir, path, data), _CLUSTER_WHERE)
