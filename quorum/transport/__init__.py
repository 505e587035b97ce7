"""Peer messaging: a sans-I/O frame codec (:mod:`.codec`) and asyncio TCP links (:mod:`.tcp`).

See docs/transport.md for the wire format, the link life cycle and the snapshot stream.
"""
