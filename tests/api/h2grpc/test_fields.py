"""RFC 9113 §8.1-§8.3 field rules on quorum.api.h2grpc: a malformed request (uppercase or
otherwise bad names, connection-specific fields, misplaced, repeated, missing or unknown
pseudo-headers, an empty :path, values with NUL/CR/LF or edge whitespace) is refused with
RST_STREAM PROTOCOL_ERROR before any handler runs, malformed trailers reset their stream,
and the connection goes on serving. A planted twin shows the refusal is what the tests see."""

from __future__ import annotations

import pytest
from hyperframe.frame import RstStreamFrame

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.h2grpc import connection
from quorum.api.h2grpc.fields import RequestHead, parse_request, trailers_problem

from .support import (
    KV_PUT,
    WATCH,
    grpc_msg,
    raw_client,
    request_headers,
    run,
    serving,
)

PROTOCOL_ERROR = 0x1
OK = 0

Headers = list[tuple[str, str]]


def _base() -> Headers:
    return request_headers(KV_PUT)


def _with(*extra: tuple[str, str]) -> Headers:
    return _base() + list(extra)


def _without(name: str) -> Headers:
    return [(k, v) for k, v in _base() if k != name]


def _replace(name: str, value: str) -> Headers:
    return [(k, value if k == name else v) for k, v in _base()]


_MALFORMED: dict[str, Headers] = {
    "uppercase name": _with(("X-Trace", "1")),
    "uppercase pseudo-header": [(":METHOD", "POST"), *_without(":method")],
    "name with a space": _with(("x trace", "1")),
    "name with a colon": _with(("x:trace", "1")),
    "name with a high byte": _with(("x-tr\u00e9", "1")),
    "empty name": _with(("", "1")),
    "connection": _with(("connection", "keep-alive")),
    "keep-alive": _with(("keep-alive", "timeout=5")),
    "proxy-connection": _with(("proxy-connection", "keep-alive")),
    "transfer-encoding": _with(("transfer-encoding", "chunked")),
    "upgrade": _with(("upgrade", "h2c")),
    "te other than trailers": _replace("te", "gzip"),
    "pseudo-header after a regular one": [*_without(":path"), (":path", KV_PUT)],
    "repeated :path": [*_base()[:3], (":path", KV_PUT), *_base()[3:]],
    "repeated :method": [(":method", "POST"), *_base()],
    "no :method": _without(":method"),
    "no :scheme": _without(":scheme"),
    "no :path": _without(":path"),
    "unknown pseudo-header": [(":foo", "bar"), *_base()],
    "response pseudo-header": [(":status", "200"), *_base()],
    "extended CONNECT's :protocol": [(":protocol", "websocket"), *_base()],
    "empty :path": _replace(":path", ""),
    "NUL in a value": _with(("x-trace", "a\x00b")),
    "CR in a value": _with(("x-trace", "a\rb")),
    "LF in a value": _with(("x-trace", "a\nx-injected: 1")),
    "leading space": _with(("x-trace", " a")),
    "trailing tab": _with(("x-trace", "a\t")),
    "CRLF in :path": _replace(":path", KV_PUT + "\r\nx: y"),
    "content-length not a number": _with(("content-length", "12a")),
    "repeated content-length": _with(("content-length", "12"), ("content-length", "12")),
}


def put(key: bytes) -> bytes:
    return grpc_msg(pb.PutRequest(key=key, value=b"v").SerializeToString())


@pytest.mark.parametrize("name", list(_MALFORMED))
def test_malformed_request_is_refused_with_protocol_error(name: str) -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, _MALFORMED[name])
            c.data(1, put(b"k"), end_stream=True)
            rst = await c.until(lambda f: f.stream_id == 1)
            assert isinstance(rst, RstStreamFrame), rst
            assert rst.error_code == PROTOCOL_ERROR
            assert s.probe.calls == []
            # the connection (and its HPACK state) still serves
            c.call(3, KV_PUT, put(b"after"))
            assert (await c.response(3)).status == OK
            assert s.probe.calls == ["Put"]

    run(main)


def test_planted_lenient_fields_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser that ignores the rules: the malformed request reaches its handler, so the
    test above (which wants a reset and no call) fails on it."""

    def lenient(headers: list[tuple[bytes, bytes]]) -> RequestHead:
        # the planted bug: names are normalised to lowercase instead of refused
        return parse_request([(k.lower(), v) for k, v in headers])

    monkeypatch.setattr(connection, "parse_request", lenient)

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, _MALFORMED["uppercase name"])
            c.data(1, put(b"k"), end_stream=True)
            resp = await c.response(1)
            assert resp.reset is None and resp.status == OK
            assert s.probe.calls == ["Put"]

    run(main)


def test_valid_edge_cases_are_served() -> None:
    """What the rules allow: te: trailers, inner spaces, an empty value, :authority absent,
    any order of the pseudo-headers."""
    headers = [(":path", KV_PUT), (":scheme", "http"), (":method", "POST"),
               ("content-type", "application/grpc"), ("te", "trailers"),
               ("x-words", "two  words"), ("x-empty", ""), ("x-tchars", "!#$%&'*+-.^_`|~")]

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, headers)
            c.data(1, put(b"k"), end_stream=True)
            assert (await c.response(1)).status == OK

    run(main)


_WATCH_MSG = grpc_msg(pb.WatchRequest(
    create_request=pb.WatchCreateRequest(key=b"w", start_revision=3)).SerializeToString())


@pytest.mark.parametrize("trailers", [
    [(":path", "/x")],
    [("x-Trace", "1")],
    [("connection", "close")],
    [("x-trace", "a\r\nb")],
], ids=["pseudo-header", "uppercase", "connection-specific", "CRLF"])
def test_malformed_trailers_reset_the_stream(trailers: Headers) -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))
            c.data(1, _WATCH_MSG)
            c.headers(1, trailers, end_stream=True)
            resp = await c.response(1)
            assert resp.reset == PROTOCOL_ERROR
            c.call(3, KV_PUT, put(b"after"))
            assert (await c.response(3)).status == OK

    run(main)


def test_well_formed_trailers_end_the_request() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))
            c.data(1, _WATCH_MSG)
            c.headers(1, [("x-checksum", "abc")], end_stream=True)
            resp = await c.response(1)
            assert resp.status == OK
            assert pb.WatchResponse.FromString(resp.messages[0]).watch_id == 3

    run(main)


def test_parse_request_units() -> None:
    ok = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"),
          (b"content-type", b"application/grpc"), (b"grpc-timeout", b"5S"),
          (b"x-id-bin", b"AAE"), (b"x-name", b"v")]
    head = parse_request(ok)
    assert head.problem is None
    assert (head.path, head.method, head.timeout) == (b"/a/b", b"POST", b"5S")
    assert head.metadata == (("x-id-bin", b"\x00\x01"), ("x-name", "v"))
    assert parse_request([*ok, (b":path", b"/c")]).problem == "pseudo-header after a regular field"
    assert trailers_problem([(b"x-a", b"1")]) is None
    assert trailers_problem([(b":status", b"200")]) is not None


@pytest.mark.parametrize(("declared", "status"), [
    (0, None), (-1, None), (+1, None), (None, OK), ("exact", OK),
], ids=["none sent", "fewer bytes", "more bytes", "no content-length", "exact"])
def test_data_must_add_up_to_the_content_length(declared: int | str | None,
                                                status: int | None) -> None:
    """RFC 9113 §8.1.1: DATA adding up to more or less than the content-length is a
    malformed request (a stream error); the exact length is served."""
    body = put(b"k")

    async def main() -> None:
        headers = _base()
        if declared == "exact" or declared == 0:
            headers = _with(("content-length", str(len(body))))
        elif isinstance(declared, int):
            headers = _with(("content-length", str(len(body) - declared)))
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, headers, end_stream=declared == 0)
            if declared != 0:
                c.data(1, body[:3])
                c.data(1, body[3:], end_stream=True)
            resp = await c.response(1)
            if status is None:
                assert resp.reset == PROTOCOL_ERROR, resp
                assert s.probe.calls == []
            else:
                assert resp.status == status, resp
                assert s.probe.calls == ["Put"]

    run(main)


def test_planted_ignored_content_length_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that parses content-length but never holds DATA to it serves the request
    with more bytes than declared: the test above tells the two apart."""
    monkeypatch.setattr(connection, "parse_request",
                        lambda headers: parse_request(headers)._replace(content_length=-1))
    body = put(b"k")

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, _with(("content-length", str(len(body) - 1))))
            c.data(1, body, end_stream=True)
            assert (await c.response(1)).status == OK
            assert s.probe.calls == ["Put"]

    run(main)
