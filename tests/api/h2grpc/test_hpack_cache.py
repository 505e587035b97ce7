"""The HPACK decode cache of H2Connection._decode_headers.

A header block made only of one-byte indexed fields changes no decoder state, so its
decoding is cached; every other block may add entries to the dynamic table (or resize it),
which shifts every dynamic index (RFC 7541 §2.3.3), so it must clear the cache. The property:
on any sequence of blocks from a real encoder (indexing, evictions, table size updates), the
connection decodes every block exactly as a fresh reference decoder does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import hpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from quorum.api.h2grpc import GrpcServer
from quorum.api.h2grpc.connection import H2Connection

# A small pool so blocks repeat and the encoder emits indexed fields from the dynamic table.
_POOL = [
    (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Put"),
    (":path", "/etcdserverpb.KV/Range"), ("content-type", "application/grpc"),
    ("te", "trailers"), ("grpc-timeout", "5S"), ("grpc-timeout", "100m"),
    ("x-token", "a"), ("x-token", "bb"), ("x-token", "c" * 40), ("x-trace", "1"),
    ("x-trace", "2"), ("x-long", "L" * 200), ("user-agent", "grpc-python/1.85"),
    *((f"x-k{i}", f"v{i}") for i in range(20)),
]

# Clients send a few request shapes over and over: draw two to four header lists of one
# length (so their indexed-only blocks are byte-identical once their fields sit at the same
# dynamic indexes: the case a stale cache gets wrong), then runs of them, each run sometimes
# opened by a table size change (evictions).
_SIZES = [None] * 12 + [0, 32, 64, 100, 256, 1024, 4096]
_shapes = st.integers(1, 5).flatmap(lambda n: st.lists(
    st.lists(st.sampled_from(_POOL), min_size=n, max_size=n), min_size=2, max_size=4))
Blocks = list[tuple[list[tuple[str, str]], int | None]]


def _runs(shapes: list[list[tuple[str, str]]]) -> st.SearchStrategy[Blocks]:
    run = st.tuples(st.sampled_from(shapes), st.integers(1, 3), st.sampled_from(_SIZES))
    return st.lists(run, min_size=3, max_size=15).map(
        lambda runs: [(h, size if i == 0 else None) for h, n, size in runs for i in range(n)])


_blocks = _shapes.flatmap(_runs)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _connection(loop: asyncio.AbstractEventLoop) -> H2Connection:
    async def make() -> H2Connection:
        return H2Connection(GrpcServer())

    return loop.run_until_complete(make())


class NeverCleared(dict[Any, Any]):
    """A planted bug: a decode cache that is not dropped when the table changes."""

    def clear(self) -> None:
        pass


def check_decoding(conn: H2Connection, blocks: Blocks,
                   ) -> int:
    """Encode ``blocks`` and compare the connection's decoding of each with a reference
    decoder's. Returns how many blocks were answered from the cache."""
    encoder = hpack.Encoder()
    reference = hpack.Decoder()
    hits = 0
    for headers, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size  # emits a size update in the next block
        block = encoder.encode(headers)
        hits += block in conn._header_cache
        got = conn._decode_headers(block)
        want = reference.decode(block, raw=True)
        assert [tuple(h) for h in got] == [tuple(h) for h in want], (block, headers)
    return hits


_settings = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(blocks=_blocks)
def test_cached_decoding_equals_a_reference_decoder(
    loop: asyncio.AbstractEventLoop, blocks: Blocks,
) -> None:
    check_decoding(_connection(loop), blocks)


def test_the_cache_is_used() -> None:
    """Repeated requests of indexed fields are answered from the cache (else the property
    above would check nothing about it)."""
    loop = asyncio.new_event_loop()
    try:
        conn = _connection(loop)
        same = [(_POOL[0], _POOL[2], ("x-token", "a"))] * 5
        hits = check_decoding(conn, [(list(h), None) for h in same])
    finally:
        loop.close()
    assert hits == 3  # first: literal, adds to the table; second: cached; then hits


def test_planted_stale_cache_is_caught(loop: asyncio.AbstractEventLoop) -> None:
    """With a cache that is never cleared, the same property fails: a block of indexed
    fields cached before a new entry shifted the dynamic table decodes to the old headers."""

    @settings(_settings, phases=[Phase.generate])  # the first failure is proof enough
    @given(blocks=_blocks)
    def prop(blocks: Blocks) -> None:
        conn = _connection(loop)
        conn._header_cache = NeverCleared()
        check_decoding(conn, blocks)

    with pytest.raises(AssertionError):
        prop()
