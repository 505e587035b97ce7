"""A fault-injecting TCP proxy for peer traffic: network partitions between real processes.

Every node's peer address, as the other nodes know it, is a port of this proxy, which forwards
to the node's real port. The proxy reads the first frame of each connection (the transport's
HELLO, which names the calling member) so it knows which directed link a connection carries;
``block({(a, b), ...})`` then cuts those links: open connections are closed and new ones are
refused until ``heal()``. Nothing else is parsed: bytes are copied as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quorum.transport.codec import HEADER_BYTES, FrameDecoder, Hello

log = logging.getLogger("quorum.verify.proxy")


class PartitionProxy:
    """One listening port per node; ``targets[node] = real (host, port)``."""

    def __init__(self, targets: dict[int, tuple[str, int]]) -> None:
        self.targets = dict(targets)
        self.listen_ports: dict[int, int] = {}
        self.blocked: set[tuple[int, int]] = set()
        self._servers: dict[int, asyncio.Server] = {}
        self._conns: dict[tuple[int, int], set[asyncio.StreamWriter]] = {}
        self.refused = 0

    async def start(self, ports: dict[int, int] | None = None) -> None:
        for node in list(self.targets):
            await self._listen(node, (ports or {}).get(node, 0))

    async def _listen(self, node: int, port: int) -> None:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.CancelledError):  # closing the proxy
                await self._accept(r, w, node)

        server = await asyncio.start_server(accept, "127.0.0.1", port)
        self._servers[node] = server
        self.listen_ports[node] = server.sockets[0].getsockname()[1]

    async def add_target(self, node: int, target: tuple[str, int], port: int = 0) -> int:
        """Start forwarding a new node (one that joins at run time): listen on ``port`` (0:
        any free one) for traffic to ``node`` and forward it to ``target``. Returns the
        listening port, the address the other nodes must know the new one by. Links to and
        from it follow the current partition: blocked only once ``block``/``partition`` is
        called again (a partition in force does not know the new node)."""
        self.targets[node] = target
        await self._listen(node, port)
        return self.listen_ports[node]

    async def remove_target(self, node: int) -> None:
        """Stop forwarding to ``node`` (removed from the cluster): close its listening port
        and every connection to or from it."""
        self.targets.pop(node, None)
        self.listen_ports.pop(node, None)
        server = self._servers.pop(node, None)
        for link in [lk for lk in self._conns if node in lk]:
            for w in self._conns.pop(link):
                w.close()
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for writers in self._conns.values():
            for w in writers:
                w.close()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # --- faults -------------------------------------------------------------------------------

    def block(self, links: set[tuple[int, int]]) -> None:
        """Cut the directed links (src, dst): messages from src no longer reach dst."""
        self.blocked = set(links)
        for link in links:
            for w in self._conns.pop(link, set()):
                w.close()

    def partition(self, *groups: tuple[int, ...]) -> None:
        """Only nodes in the same group can talk; nodes in no group are isolated."""
        where = {n: i for i, g in enumerate(groups) for n in g}
        nodes = list(self.targets)
        self.block({(a, b) for a in nodes for b in nodes
                    if a != b and (a not in where or where.get(a) != where.get(b))})

    def heal(self) -> None:
        self.blocked = set()

    # --- forwarding ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      dst: int) -> None:
        try:
            first, src = await self._read_hello(reader)
        except Exception:
            writer.close()
            return
        link = (src, dst)
        if link in self.blocked:
            self.refused += 1
            writer.close()
            return
        target = self.targets.get(dst)
        if target is None:  # removed meanwhile
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        self._conns.setdefault(link, set()).update({writer, up_writer})
        up_writer.write(first)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                self._conns.get(link, set()).discard(w)

    @staticmethod
    async def _read_hello(reader: asyncio.StreamReader) -> tuple[bytes, int]:
        header = await reader.readexactly(HEADER_BYTES)
        length = int.from_bytes(header[6:10], "big")
        body = await reader.readexactly(length)
        frames = FrameDecoder().feed(header + body)
        hello = frames[0]
        if not isinstance(hello, Hello):
            raise ValueError("first frame is not HELLO")
        return header + body, hello.from_id

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
