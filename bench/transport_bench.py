"""Throughput of quorum.transport over loopback: a "leader" streams APPs to a "follower".

    .venv/bin/python bench/transport_bench.py [--messages N] [--batch B] [--entries E]
                                              [--window W] [--processes 1|2] [--no-uvloop]
                                              [--snapshot-mib M]

The leader calls ``send()`` with batches of ``B`` APP messages, each carrying ``E`` entries of
100 bytes. The follower answers every delivered batch with one APP_RESP naming the last index
it got, and the leader keeps at most ``W`` messages unacknowledged, like a leader with a
bounded replication window. So both directions carry traffic, as in a cluster. With
``--processes 1`` both transports share one event loop; with ``--processes 2`` the follower
runs in a child process (two cores, closer to a real deployment). The figures cover encoding,
framing, CRC, the socket and decoding; messages are built before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

from quorum.raft.types import Entry, Message, MessageType, Snapshot, SnapshotMetadata
from quorum.transport.tcp import Address, PeerTransport, TransportConfig

ENTRY_BYTES = 100
MIB = 1024 * 1024
LEADER, FOLLOWER = 1, 2
WINDOW_MAX = 1 << 20  # --window must not exceed this


def _install_loop(use_uvloop: bool) -> str:
    if use_uvloop:
        try:
            import uvloop

            uvloop.install()
            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


def _batch(first: int, count: int, entries: int) -> list[Message]:
    """APPs numbered first..first+count-1 (the message number is ``index``)."""
    payload = b"x" * ENTRY_BYTES
    out = []
    for number in range(first, first + count):
        ents = tuple(Entry(term=3, index=number * entries + k, data=payload)
                     for k in range(entries))
        out.append(Message(MessageType.APP, to=FOLLOWER, from_=LEADER, term=3, log_term=3,
                           index=number, entries=ents, commit=number))
    return out


async def _no_chunks(peer: int, chunk: object) -> None:
    return None


UNREACHABLE: list[int] = []  # a report means a queue overflowed or a link broke: no result


def _overrun(peer: int) -> None:
    UNREACHABLE.append(peer)


def _transport(member: int, on_messages: Any) -> PeerTransport:
    # The queue must hold a full window plus the batch being added.
    config = TransportConfig(max_queued_messages=max(10_000, 2 * WINDOW_MAX))
    return PeerTransport(7, member, ("127.0.0.1", 0), {}, on_messages, _overrun, _no_chunks,
                         config, rng=random.Random(member))


async def _follower(leader: Address, report: Any) -> PeerTransport:
    """Start the follower; it acknowledges each delivered batch with one APP_RESP."""
    holder: list[PeerTransport] = []

    def on_messages(msgs: list[Message]) -> None:
        last = msgs[-1].index
        holder[0].send([Message(MessageType.APP_RESP, to=LEADER, from_=FOLLOWER, term=3,
                                index=last)])

    follower = _transport(FOLLOWER, on_messages)
    holder.append(follower)
    await follower.start()
    follower.update_peers({LEADER: leader})
    report(follower.address)
    return follower


def _follower_process(leader: Address, conn: Connection, use_uvloop: bool) -> None:
    _install_loop(use_uvloop)

    async def serve() -> None:
        follower = await _follower(leader, conn.send)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
        await follower.close()

    asyncio.run(serve())


async def _leader(args: argparse.Namespace) -> dict[str, float]:
    acked, responses = [0], [0]
    progress = asyncio.Event()

    def on_messages(msgs: list[Message]) -> None:
        acked[0] = max(acked[0], msgs[-1].index)
        responses[0] += len(msgs)
        progress.set()

    async def until(predicate: Any) -> None:
        while not predicate():
            if UNREACHABLE:
                raise SystemExit(f"peers reported unreachable during the run: {UNREACHABLE}")
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 1.0)

    # Built before any link exists: this blocks the loop for seconds at large counts, which
    # would otherwise (rightly) trip the keepalive.
    groups = [] if args.snapshot_mib else [
        _batch(first, args.batch, args.entries)
        for first in range(1, args.messages + 1, args.batch)
    ]
    leader = _transport(LEADER, on_messages)
    await leader.start()
    stop = await _start_follower(args, leader.address)
    leader.update_peers({FOLLOWER: stop.address})
    leader.send(_batch(0, 1, args.entries))  # connect both links and warm up
    await until(lambda: responses[0] > 0)
    if args.snapshot_mib:
        result = await _snapshot_run(leader, args.snapshot_mib)
        await leader.close()
        await stop.close()
        return result
    before = leader.link_stats()[FOLLOWER].sent_bytes
    start, cpu_start = time.perf_counter(), time.process_time()
    sent = [0]
    for group in groups:
        await until(lambda: sent[0] - acked[0] <= args.window)
        leader.send(group)
        sent[0] += len(group)
        await asyncio.sleep(0)  # one send() per loop turn, like a runtime's Ready loop
    total = sent[0]
    await until(lambda: acked[0] >= total)
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    stats = leader.link_stats()[FOLLOWER]
    await leader.close()
    await stop.close()
    return {
        "messages": total,
        "seconds": elapsed,
        "msgs_per_s": total / elapsed,
        "entries_per_s": total * args.entries / elapsed,
        "wire_mb_per_s": (stats.sent_bytes - before) / elapsed / 1e6,
        "payload_mb_per_s": total * args.entries * ENTRY_BYTES / elapsed / 1e6,
        "msgs_per_frame": stats.sent_messages / max(stats.sent_frames, 1),
        "msgs_per_cpu_s": total / cpu_s,
    }


async def _snapshot_run(leader: PeerTransport, mib: int) -> dict[str, float]:
    """Stream ``mib`` MiB as a snapshot (1 MiB pieces) and time it until the receiver's ACK."""
    piece = bytes(1024 * 1024)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(mib):
            yield piece

    message = Message(MessageType.SNAP, to=FOLLOWER, from_=LEADER, term=3,
                      snapshot=Snapshot(metadata=SnapshotMetadata(index=1, term=3)))
    start, cpu_start = time.perf_counter(), time.process_time()
    await leader.send_snapshot(FOLLOWER, message, pieces())
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    return {"snapshot_mib": mib, "seconds": elapsed, "snapshot_mb_per_s": mib * MIB / elapsed / 1e6,
            "snapshot_mb_per_cpu_s": mib * MIB / cpu_s / 1e6}


class _Stopper:
    """Stops the follower, in this process or the child."""

    def __init__(self, address: Address, close: Any) -> None:
        self.address = address
        self._close = close

    async def close(self) -> None:
        await self._close()


async def _start_follower(args: argparse.Namespace, leader: Address) -> _Stopper:
    if args.processes == 1:
        box: list[Address] = []
        follower = await _follower(leader, box.append)
        return _Stopper(box[0], follower.close)
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_follower_process, args=(leader, theirs, not args.no_uvloop))
    child.start()
    address = await asyncio.get_running_loop().run_in_executor(None, ours.recv)

    async def close() -> None:
        ours.send("stop")
        await asyncio.get_running_loop().run_in_executor(None, child.join)

    return _Stopper(tuple(address), close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=64, help="messages per send() call")
    parser.add_argument("--entries", type=int, default=1, help="100-byte entries per message")
    parser.add_argument("--window", type=int, default=4096, help="max unacknowledged messages")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=2)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--snapshot-mib", type=int, default=0,
                        help="instead of messages, time one snapshot of this many MiB")
    args = parser.parse_args()
    if not 0 < args.window <= WINDOW_MAX:
        parser.error(f"--window must be in [1, {WINDOW_MAX}]")
    loop_name = _install_loop(not args.no_uvloop)
    result = asyncio.run(_leader(args))
    if args.snapshot_mib:
        print(f"loop={loop_name} processes={args.processes} snapshot={args.snapshot_mib} MiB\n"
              f"  {result['snapshot_mb_per_s']:.0f} MB/s  ({result['seconds']:.2f} s)  "
              f"{result['snapshot_mb_per_cpu_s']:.0f} MB per CPU second of this process")
        return
    print(
        f"loop={loop_name} processes={args.processes} messages={result['messages']} "
        f"batch={args.batch} entries/msg={args.entries} window={args.window}\n"
        f"  {result['msgs_per_s']:,.0f} msgs/s  {result['entries_per_s']:,.0f} entries/s  "
        f"{result['payload_mb_per_s']:.1f} MB/s payload  {result['wire_mb_per_s']:.1f} MB/s "
        f"wire  {result['msgs_per_frame']:.1f} msgs/frame  ({result['seconds']:.2f} s)\n"
        f"  {result['msgs_per_cpu_s']:,.0f} msgs per CPU second of this process "
        f"({'both ends' if args.processes == 1 else 'sender side only'})"
    )


if __name__ == "__main__":
    main()
