"""HTTP/1.1 on the gRPC port (quorum.api.h2grpc.http1): requests are answered by the
server's http1_handler, or 404 without one; keep-alive, pipelining, streamed answers,
Connection: close, and refusals of malformed or oversized requests; gRPC on the same port is
unaffected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from quorum.api.h2grpc.http1 import MAX_BODY, MAX_HEAD, Request, Response, looks_like_http1
from quorum.api.h2grpc.wire import PREFACE

from .support import STEP_S, run, serving, still_serving


async def handler(req: Request) -> Response:
    if req.path == "/stream":
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"chunk %d\n" % i
                await asyncio.sleep(0)
        return Response(200, stream=chunks(), content_type="text/plain")
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    body = b"%s %s %s %s" % (req.method.encode(), req.path.encode(), req.query.encode(), req.body)
    return Response(200, body, "text/plain")


async def exchange(port: int, data: bytes, until_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), STEP_S)
        return await asyncio.wait_for(reader.read(65536), STEP_S)
    finally:
        writer.close()


async def read_responses(reader: asyncio.StreamReader, n: int) -> list[tuple[str, bytes]]:
    """n Content-Length answers: (status line, body) each."""
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_S)
        lines = head.decode().split("\r\n")
        length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
        out.append((lines[0], await reader.readexactly(length)))
    return out


def test_first_bytes_decide_the_protocol() -> None:
    assert looks_like_http1(b"GET / HTTP/1.1\r\n")
    assert looks_like_http1(b"POST /v3/kv/range")
    assert looks_like_http1(b"GE")
    assert not looks_like_http1(b"P")  # PUT or the HTTP/2 preface: undecided yet
    assert not looks_like_http1(PREFACE[:10])
    assert not looks_like_http1(b"\x16\x03\x01")


def test_without_a_handler_http1_gets_404_and_grpc_still_works() -> None:
    async def body() -> None:
        async with serving() as s:
            out = await exchange(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 404 ")
            await still_serving(s.target)

    run(body)


def test_keep_alive_pipelining_and_bodies() -> None:
    async def body() -> None:
        async with serving(http1_handler=handler) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            got = await read_responses(reader, 2)
            assert got == [("HTTP/1.1 200 OK", b"GET /a x=1 "), ("HTTP/1.1 200 OK", b"POST /b  hello")]
            # the same connection serves a body sent in pieces
            writer.write(b"POST /c HTTP/1.1\r\nContent-Length: 6\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"cdef")
            assert await read_responses(reader, 1) == [("HTTP/1.1 200 OK", b"POST /c  abcdef")]
            writer.close()
            await still_serving(s.target)

    run(body)


def test_streamed_answer_is_chunked() -> None:
    async def body() -> None:
        async with serving(http1_handler=handler) as s:
            out = await exchange(s.port, b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n",
                                 until_close=True)
            head, _, rest = out.partition(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head and b"Connection: close" in head
            assert rest == b"8\r\nchunk 0\n\r\n8\r\nchunk 1\n\r\n8\r\nchunk 2\n\r\n0\r\n\r\n"

    run(body)


def test_bad_requests_are_refused_and_the_connection_closes() -> None:
    async def body() -> None:
        async with serving(http1_handler=handler) as s:
            cases = [
                (b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", b"431"),
                (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000, b"431"),  # no end of head yet
                (b"GET /\r\n\r\n", b"400"),
                (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
                (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
                (b"POST / HTTP/1.1\r\nContent-Length: -4\r\n\r\n", b"400"),
                (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), b"413"),
            ]
            for request, status in cases:
                out = await exchange(s.port, request, until_close=True)
                assert out.startswith(b"HTTP/1.1 " + status), (request[:40], out[:60])
            out = await exchange(s.port, b"GET /boom HTTP/1.1\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 500 ")
            await still_serving(s.target)

    run(body)


def test_http1_client_that_vanishes_mid_stream_costs_nothing() -> None:
    async def body() -> None:
        async with serving(http1_handler=handler) as s:
            _reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part")
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.05)
            await still_serving(s.target)

    run(body)
