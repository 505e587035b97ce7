"""Throughput of quorum.transport over loopback: two PeerTransports, one sending APPs.

    .venv/bin/python bench/transport_bench.py [--messages N] [--batch B] [--entries E]

The sender calls ``send()`` with batches of ``B`` APP messages, each carrying ``E`` entries of
100 bytes, keeping at most ``--window`` messages in flight (sent but not yet delivered), like a
leader with a bounded replication window. Both transports share one event loop (uvloop when
installed), so the figure includes encoding, framing, CRC, the socket and decoding on both ends.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from quorum.raft.types import Entry, Message, MessageType
from quorum.transport.tcp import PeerTransport

ENTRY_BYTES = 100


def _batch(first_index: int, count: int, entries: int) -> list[Message]:
    payload = b"x" * ENTRY_BYTES
    out = []
    for n in range(count):
        base = (first_index + n) * entries
        ents = tuple(Entry(term=3, index=base + k, data=payload) for k in range(entries))
        out.append(Message(MessageType.APP, to=2, from_=1, term=3, log_term=3, index=base - 1,
                           entries=ents, commit=base - 1))
    return out


async def _run(messages: int, batch: int, entries: int, window: int) -> dict[str, float]:
    received = [0]
    progress = asyncio.Event()

    def on_messages(msgs: list[Message]) -> None:
        received[0] += len(msgs)
        progress.set()

    async def no_chunks(peer: int, chunk: object) -> None:
        return None

    def unreachable(peer: int) -> None:
        raise SystemExit(f"peer {peer} reported unreachable: the benchmark overran a queue")

    rx = PeerTransport(1, 2, ("127.0.0.1", 0), {}, on_messages, unreachable, no_chunks,
                       rng=random.Random(2))
    tx = PeerTransport(1, 1, ("127.0.0.1", 0), {}, lambda m: None, unreachable, no_chunks,
                       rng=random.Random(1))
    await rx.start()
    await tx.start()
    tx.update_peers({2: rx.address})
    prepared = [_batch(i, batch, entries) for i in range(0, messages, batch)]
    tx.send(_batch(0, 1, entries))  # connect and warm up
    while received[0] < 1:
        progress.clear()
        await progress.wait()
    received[0] = 0
    start = time.perf_counter()
    sent = 0
    for group in prepared:
        while sent - received[0] > window:
            progress.clear()
            await progress.wait()
        tx.send(group)
        sent += len(group)
        await asyncio.sleep(0)  # one send per loop turn, as a runtime's Ready loop would
    while received[0] < sent:
        progress.clear()
        await progress.wait()
    elapsed = time.perf_counter() - start
    stats = tx.link_stats()[2]
    await tx.close()
    await rx.close()
    return {
        "messages": sent,
        "seconds": elapsed,
        "msgs_per_s": sent / elapsed,
        "entries_per_s": sent * entries / elapsed,
        "wire_mb_per_s": stats.sent_bytes / elapsed / 1e6,
        "payload_mb_per_s": sent * entries * ENTRY_BYTES / elapsed / 1e6,
        "msgs_per_frame": stats.sent_messages / max(stats.sent_frames, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64, help="messages per send() call")
    parser.add_argument("--entries", type=int, default=1, help="100-byte entries per message")
    parser.add_argument("--window", type=int, default=4096, help="max messages in flight")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.install()
            loop_name = "uvloop"
        except ImportError:
            pass
    result = asyncio.run(_run(args.messages, args.batch, args.entries, args.window))
    print(
        f"loop={loop_name} messages={result['messages']} batch={args.batch} "
        f"entries/msg={args.entries} window={args.window}\n"
        f"  {result['msgs_per_s']:,.0f} msgs/s  {result['entries_per_s']:,.0f} entries/s  "
        f"{result['payload_mb_per_s']:.1f} MB/s payload  {result['wire_mb_per_s']:.1f} MB/s wire  "
        f"{result['msgs_per_frame']:.1f} msgs/frame  ({result['seconds']:.2f} s)"
    )


if __name__ == "__main__":
    main()
