"""The node runtime: the one layer with an event loop.

``NodeCore`` (core.py) is synchronous and holds every rule; ``process_ready`` (ready.py) is the
single function that orders persist -> send -> apply -> advance, called by both the asyncio
server (server.py) and the deterministic simulator (quorum.sim).
"""
