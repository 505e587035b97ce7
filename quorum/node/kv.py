"""The key-value service's state machine as the runtime sees it (quorum.state behind the
node's StateMachine interface)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from quorum.errors import QuorumError
from quorum.state import Envelope, Request, Response, StateConfig, decode_command
from quorum.state import StateMachine as KvStore


class KvStateMachine:
    """Adapts quorum.state.StateMachine to quorum.node.statemachine.StateMachine.

    ``on_apply(request, result)`` runs after every successfully applied command on every node
    (the API layer wakes watchers and mirrors lease changes into the leader's tracker).
    """

    # snapshot() captures the state at once (pointer copies) and encodes lazily from the
    # capture, so the runtime may consume it in another thread while applying continues.
    snapshot_captures_state = True

    def __init__(self, config: StateConfig | None = None, *,
                 split_txn_events_bug: bool = False) -> None:
        self.store = KvStore(config, split_txn_events_bug=split_txn_events_bug)
        self.on_apply: Callable[[Request, Response], None] | None = None

    def apply(self, index: int, data: bytes) -> Response:
        envelope = decode_command(data)
        result = self.store.apply(index, envelope)  # StateError: nothing changed
        if self.on_apply is not None:
            self.on_apply(envelope.request, result)
        return result

    def apply_batch(self, index: int, commands: list[bytes]) -> list[Response | QuorumError]:
        """The commands of one entry, in order (quorum.node.statemachine.BatchStateMachine).
        A command that does not decode fails alone, like one that breaks a state rule."""
        decoded: list[Envelope] = []
        undecodable: dict[int, QuorumError] | None = None  # position -> its error
        for position, data in enumerate(commands):
            try:
                decoded.append(decode_command(data))
            except QuorumError as exc:
                if undecodable is None:
                    undecodable = {}
                undecodable[position] = exc
        results = self.store.apply_batch(index, decoded) if decoded else []
        on_apply = self.on_apply
        if on_apply is not None:
            for envelope, result in zip(decoded, results):
                if not isinstance(result, QuorumError):
                    on_apply(envelope.request, result)
        if undecodable is None:
            return list(results)
        applied = iter(results)
        return [undecodable[p] if p in undecodable else next(applied)
                for p in range(len(commands))]

    def snapshot(self) -> Iterator[bytes]:
        return self.store.snapshot()

    def restore(self, chunks: Iterable[bytes]) -> None:
        self.store.restore(chunks)
