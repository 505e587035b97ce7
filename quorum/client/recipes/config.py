"""ConfigWatcher: a local dict kept equal to the keys under a prefix.

The first read and the watch that follows it are joined at one revision, so the dict goes
through exactly the states the store went through (no missed or doubled change), also across
reconnects (the watch resumes from the last revision seen + 1). If that revision was compacted
while disconnected, the dict is reloaded (see ``PrefixMirror``).
"""

from __future__ import annotations

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import PrefixMirror, as_bytes


class ConfigWatcher(PrefixMirror):
    """``async with ConfigWatcher(client, "/app/config/") as cfg: cfg.get(b"timeout")``.
    Keys are stored without the prefix. ``revision`` is the store revision reflected."""

    def __init__(self, client: AsyncClient, prefix: bytes | str) -> None:
        super().__init__(client, as_bytes(prefix))

    def get(self, name: bytes | str, default: bytes | None = None) -> bytes | None:
        return self.items.get(as_bytes(name), default)

    def snapshot(self) -> dict[bytes, bytes]:
        return dict(self.items)

    async def wait_revision(self, revision: int, timeout_s: float | None = None) -> None:
        """Wait until the dict reflects at least ``revision`` (e.g. after your own put)."""
        await self.wait_for(lambda _items: self.revision >= revision, timeout_s)

    async def __aenter__(self) -> ConfigWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
