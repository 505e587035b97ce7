"""Read-only inspection of a data directory, for ``quorum wal inspect|verify``.

:func:`inspect` scans WAL segments record by record and reads snapshot headers; :func:`verify`
also checks every snapshot's data checksum and applies the recovery rules of
``DurableStorage.open`` (gaps, hard state against the log) without changing anything: a torn
tail is reported, not cut. Both return a :class:`Report` (msgspec Struct, so the CLI can print
it as JSON) and :func:`render` gives the human text.
"""

from __future__ import annotations

import os

import msgspec

from quorum.errors import CorruptionError
from quorum.raft.types import ConfState, HardState
from quorum.storage import record
from quorum.storage import snapshot as snapfile
from quorum.storage.fs import FileSystem, OsFileSystem
from quorum.storage.record import RecordType
from quorum.storage.segment import SegmentScan, list_segments, read_segment
from quorum.storage.wal import Replayed, check_stop, replay_segment


class SegmentInfo(msgspec.Struct):
    path: str
    seq: int
    first_index: int
    size_bytes: int
    valid_bytes: int
    records: int = 0
    batches: int = 0
    entries: int = 0
    min_index: int = 0  # lowest / highest entry index written in this segment (0: none)
    max_index: int = 0
    hard_states: int = 0
    snapshot_markers: int = 0
    problem: str = ""


class SnapshotInfo(msgspec.Struct):
    path: str
    index: int
    term: int
    conf_state: ConfState | None = None
    data_bytes: int = 0
    data_checked: bool = False  # verify() read the data and its checksum matched
    problem: str = ""


class Report(msgspec.Struct):
    data_dir: str
    mode: str  # "inspect" or "verify"
    segments: list[SegmentInfo] = msgspec.field(default_factory=list)
    snapshots: list[SnapshotInfo] = msgspec.field(default_factory=list)
    hard_state: HardState | None = None
    log_first_index: int = 0  # the replayed WAL log (before applying a snapshot)
    log_last_index: int = 0
    torn_tail_bytes: int = 0  # what recovery would cut off the last segment
    problems: list[str] = msgspec.field(default_factory=list)
    quarantined: list[str] = msgspec.field(default_factory=list)  # *.snap.corrupt set aside

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect(data_dir: str, fs: FileSystem | None = None) -> Report:
    """Describe segments, index ranges, hard state and snapshots (headers only)."""
    return _build(data_dir, fs or OsFileSystem(), "inspect")


def verify(data_dir: str, fs: FileSystem | None = None) -> Report:
    """Everything :func:`inspect` does, plus snapshot data checksums and recovery checks."""
    return _build(data_dir, fs or OsFileSystem(), "verify")


def _build(data_dir: str, fs: FileSystem, mode: str) -> Report:
    report = Report(data_dir=data_dir, mode=mode)
    replayed = _scan_wal(fs, os.path.join(data_dir, "wal"), report)
    _scan_snapshots(fs, os.path.join(data_dir, "snap"), report, check_data=mode == "verify")
    if replayed is not None:
        report.hard_state = replayed.hard_state
        report.log_first_index, report.log_last_index = replayed.log_start, replayed.last_index
        if mode == "verify":
            _cross_check(report, replayed)
    return report


def _scan_wal(fs: FileSystem, wal_dir: str, report: Report) -> Replayed | None:
    """Scan every segment; replay while no problem was found (returns None after one)."""
    if not fs.exists(wal_dir):
        report.problems.append(f"{wal_dir}: no WAL directory")
        return None
    names = list_segments(fs, wal_dir)
    replayed: Replayed | None = Replayed(log_start=names[0].first_index) if names else Replayed()
    for position, name in enumerate(names):
        path = os.path.join(wal_dir, name.filename)
        if position and name.seq != names[position - 1].seq + 1:
            report.problems.append(f"{path}: missing segment before seq {name.seq}")
            replayed = None
        try:
            scan = read_segment(fs, wal_dir, name)
        except CorruptionError as exc:
            size = fs.size(path)
            info = SegmentInfo(path, name.seq, name.first_index, size, 0, problem=str(exc))
            report.segments.append(info)
            report.problems.append(str(exc))
            replayed = None
            continue
        info = _segment_info(scan)
        report.segments.append(info)
        replayed = _replay_quietly(scan, replayed, position, len(names), report, info)
    return replayed


def _replay_quietly(
    scan: SegmentScan,
    replayed: Replayed | None,
    position: int,
    count: int,
    report: Report,
    info: SegmentInfo,
) -> Replayed | None:
    if replayed is None:
        return None
    try:
        check_stop(scan, last=position == count - 1, replayed=replayed, announce=False)
        replay_segment(scan, replayed, expect_first=None if position == 0 else True)
    except CorruptionError as exc:
        info.problem = str(exc)
        report.problems.append(str(exc))
        return None
    report.torn_tail_bytes = replayed.torn_bytes
    if replayed.torn_bytes:
        info.problem = f"torn tail: {replayed.torn_bytes} bytes would be cut at offset {scan.end}"
    return replayed


def _segment_info(scan: SegmentScan) -> SegmentInfo:
    info = SegmentInfo(
        scan.path, scan.name.seq, scan.name.first_index, scan.size, scan.end, len(scan.records) + 1
    )
    for rec in scan.records:
        if rec.type == RecordType.BATCH:
            batch = record.decode_batch(rec.payload)
            info.batches += 1
            info.hard_states += batch.hard_state is not None
            if batch.entries:
                info.entries += len(batch.entries)
                lo, hi = batch.entries[0].index, batch.entries[-1].index
                info.min_index = min(info.min_index or lo, lo)
                info.max_index = max(info.max_index, hi)
        elif rec.type == RecordType.HARD_STATE:
            info.hard_states += 1
        elif rec.type == RecordType.SNAPSHOT_MARKER:
            info.snapshot_markers += 1
    return info


def _scan_snapshots(fs: FileSystem, snap_dir: str, report: Report, check_data: bool) -> None:
    if not fs.exists(snap_dir):
        return
    report.quarantined = [
        os.path.join(snap_dir, n) for n in fs.listdir(snap_dir) if n.endswith(".corrupt")
    ]
    for index, term, path in snapfile.SnapshotStore(fs, snap_dir).paths():
        info = SnapshotInfo(path, index, term)
        try:
            snap = snapfile.open_snapshot(fs, path)
            info.conf_state, info.data_bytes = snap.metadata.conf_state, snap.data_len
            if check_data:
                for _ in snapfile.read_chunks(fs, snap):
                    pass
                info.data_checked = True
        except CorruptionError as exc:
            info.problem = str(exc)
            if check_data:
                report.problems.append(str(exc))
        report.snapshots.append(info)


def _cross_check(report: Report, replayed: Replayed) -> None:
    """The rules DurableStorage.open applies between snapshot, log and hard state."""
    valid = [s for s in report.snapshots if not s.problem]
    base = valid[-1].index if valid else 0
    if replayed.log_start > base + 1:
        report.problems.append(
            f"log starts at {replayed.log_start} but the newest valid snapshot ends at {base}"
        )
    last = max(replayed.last_index, base)
    if replayed.hard_state.commit > last:
        report.problems.append(f"hard state commit {replayed.hard_state.commit} beyond last {last}")


def render(report: Report) -> str:
    """Human-readable text of a report."""
    lines = [f"{report.mode} {report.data_dir}: {'OK' if report.ok else 'PROBLEMS FOUND'}"]
    hs = report.hard_state
    if hs is not None:
        lines.append(f"hard state: term={hs.term} vote={hs.vote} commit={hs.commit}")
    lines.append(f"WAL log: [{report.log_first_index}, {report.log_last_index}]")
    for seg in report.segments:
        span = f"[{seg.min_index}, {seg.max_index}]" if seg.entries else "no entries"
        lines.append(
            f"  segment {os.path.basename(seg.path)}: {seg.valid_bytes}/{seg.size_bytes} bytes, "
            f"{seg.records} records, {seg.entries} entries {span}"
            + (f" -- {seg.problem}" if seg.problem else "")
        )
    for snap in report.snapshots:
        check = "data checked" if snap.data_checked else "header only"
        lines.append(
            f"  snapshot {os.path.basename(snap.path)}: index={snap.index} term={snap.term} "
            f"{snap.data_bytes} bytes ({check})" + (f" -- {snap.problem}" if snap.problem else "")
        )
    lines += [f"  quarantined (failed its checksum earlier): {p}" for p in report.quarantined]
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines)
