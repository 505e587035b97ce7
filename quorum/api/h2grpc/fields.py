"""Request header and trailer fields: what a gRPC call needs from them, and RFC 9113's
rules for well-formed ones (§8.1.1, §8.2, §8.3.1), so a malformed request is refused with a
stream error instead of reaching a handler. A request smuggled past an intermediary by
such fields (a second :path, a ``transfer-encoding``, a CR/LF in a value) means different
things to different readers; refusing it is what the RFC requires of every endpoint.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

# RFC 9113 §8.3.1: the request pseudo-headers (":protocol" belongs to extended CONNECT,
# RFC 8441, which this server does not offer: unknown here, so refused)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_REQUIRED = (b":method", b":scheme", b":path")

# §8.2.2: connection-specific fields are malformed in HTTP/2 ("te" is allowed with the
# value "trailers" only)
_CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})

# §8.2.1: a name holds no 0x00-0x20, no uppercase, no 0x7f-0xff, and no colon outside the
# pseudo-header prefix; a value holds no NUL, CR or LF and neither starts nor ends with
# space or tab
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")

# request headers that are the transport's, not the caller's metadata
_TRANSPORT_HEADERS = frozenset({
    b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
    b"user-agent", b"content-length",
})


class RequestHead(NamedTuple):
    """A request's header fields as a call needs them; ``problem`` is set (and the rest is
    not to be used) if the fields are malformed."""

    path: bytes = b""
    method: bytes = b""
    content_type: bytes = b""
    timeout: bytes = b""
    encoding: bytes = b""
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    content_length: int = -1  # -1: not given
    problem: str | None = None


def _field_problem(name: bytes, value: bytes) -> str | None:
    """What is wrong with a regular (not pseudo) field, or None."""
    if not name or _BAD_NAME.search(name):
        return f"malformed field name {name[:64]!r}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name.decode('latin-1')}"
    if name == b"te" and value != b"trailers":
        return "te other than trailers"
    if _BAD_VALUE.search(value):
        return f"malformed value of {name.decode('latin-1')}"
    return None


def parse_request(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """The call fields of a request's header list, checked against RFC 9113 §8.2 and §8.3.

    The checks run per call whenever the client's block changes (a grpc-timeout does, every
    call), so the loop only sorts the fields and the character checks run once over all
    names and once over all values, joined by NUL (a byte no valid field holds)."""
    pseudo: dict[bytes, bytes] = {}
    ctype = timeout = encoding = b""
    metadata: list[tuple[str, str | bytes]] = []
    content_length = -1
    regular = 0
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return RequestHead(problem="pseudo-header after a regular field")
            if name not in _REQUEST_PSEUDO:
                return RequestHead(problem=f"unknown pseudo-header {name[:64]!r}")
            if name in pseudo:
                return RequestHead(problem=f"repeated pseudo-header {name.decode()}")
            pseudo[name] = value
            continue
        regular += 1
        if name == b"content-type":
            ctype = value
        elif name == b"grpc-timeout":
            timeout = value
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"te":
            if value != b"trailers":
                return RequestHead(problem="te other than trailers")
        elif name == b"content-length":  # §8.1.1: DATA must add up to it
            if content_length >= 0 or not value.isdigit() or len(value) > 18:
                return RequestHead(problem="malformed or repeated content-length")
            content_length = int(value)
        elif name in _CONNECTION_SPECIFIC:
            return RequestHead(problem=f"connection-specific field {name.decode('latin-1')}")
        elif name not in _TRANSPORT_HEADERS:
            metadata.append((name.decode("latin-1"), _metadata_value(name, value)))
    problem = _joined_problem([n for n, _ in headers[len(pseudo):]], [v for _, v in headers])
    if problem is not None:
        return RequestHead(problem=problem)
    for name in _REQUIRED:
        if name not in pseudo:
            return RequestHead(problem=f"no {name.decode()} pseudo-header")
    if not pseudo[b":path"]:
        return RequestHead(problem="empty :path")
    return RequestHead(pseudo[b":path"], pseudo[b":method"], ctype, timeout, encoding,
                       tuple(metadata), content_length)


# The joined checks use bytes.translate and substring tests, which run in C; a regular
# expression with alternatives costs microseconds over a whole header list.
# Allowed in a regular name (and NUL, the separator): 0x21-0x7e but uppercase and colon.
_NAME_OK = bytes([0, *(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)])
# Values are mapped to: NUL stays, space and tab -> 1, CR and LF -> 2, all else -> "a".
_VALUE_MAP = bytes(0 if c == 0 else 1 if c in (0x20, 0x09) else 2 if c in (0x0A, 0x0D)
                   else 0x61 for c in range(256))


def _joined_problem(names: list[bytes], values: list[bytes]) -> str | None:
    """The first rule of §8.2.1 the regular ``names`` or any of ``values`` break, or None."""
    if names:
        joined = b"\x00".join(names)
        if (joined.translate(None, _NAME_OK) or joined.count(0) != len(names) - 1
                or not all(names)):
            bad = next(n for n in names if not n or _BAD_NAME.search(n))
            return f"malformed field name {bad[:64]!r}"
    if values:
        mapped = b"\x00".join(values).translate(_VALUE_MAP)
        if (mapped.count(0) != len(values) - 1 or b"\x02" in mapped or b"\x01\x00" in mapped
                or b"\x00\x01" in mapped or mapped[:1] == b"\x01" or mapped[-1:] == b"\x01"):
            return "malformed field value"
    return None


def trailers_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a request's trailer fields malformed (§8.1: no pseudo-headers), or None."""
    for name, value in headers:
        if name[:1] == b":":
            return f"pseudo-header {name[:64]!r} in trailers"
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
    return None


def _metadata_value(name: bytes, value: bytes) -> str | bytes:
    """A metadata value as grpc.aio hands it over: text, or for a "-bin" key the bytes its
    base64 text (sent unpadded) stands for; undecodable base64 is passed on as is."""
    if not name.endswith(b"-bin"):
        return value.decode("latin-1")
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except binascii.Error:
        return value
