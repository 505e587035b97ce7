"""A small data-driven runner for interaction scripts of the Raft core.

A script is a sequence of blocks separated by blank lines. A block is one command line
(``#`` lines are comments), then ``----``, then the expected output (never blank; "ok" if
there is nothing to say). With QUORUM_REWRITE=1 the expected outputs are regenerated; review
the diff by hand: the outputs are assertions, not recordings.

Every node has its own MemoryStorage and a fixed rng seed (its id); a Ready is persisted,
its messages queued (unless the link is cut), committed entries applied (conf changes through
``apply_conf_change``) and then acknowledged with ``advance``. See docs/raft.md for the
command list.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from quorum.errors import QuorumError
from quorum.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    RawNode,
    ReadOnlyOption,
    Snapshot,
    SnapshotMetadata,
    StateRole,
)
from quorum.raft.describe import (
    describe_conf_state,
    describe_entry,
    describe_message,
    describe_ready,
    describe_status,
)

_CC_TYPES = {"v": ConfChangeType.ADD_NODE, "l": ConfChangeType.ADD_LEARNER,
             "r": ConfChangeType.REMOVE_NODE, "u": ConfChangeType.UPDATE_NODE}
_TRANSITIONS = {"auto": ConfChangeTransition.AUTO,
                "implicit": ConfChangeTransition.JOINT_IMPLICIT,
                "explicit": ConfChangeTransition.JOINT_EXPLICIT}


@dataclasses.dataclass
class Block:
    command: str
    expected: str
    line: int
    comment: str = ""  # comment lines right before the command (kept on rewrite)


def parse_script(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = len(script_header(text).splitlines())
    comment: list[str] = []
    while i < len(lines):
        if not lines[i].strip():
            comment = []
            i += 1
            continue
        if lines[i].startswith("#"):
            comment.append(lines[i])
            i += 1
            continue
        start = i
        command = lines[i].strip()
        i += 1
        if i >= len(lines) or lines[i].strip() != "----":
            raise ValueError(f"line {i + 1}: expected ---- after the command {command!r}")
        i += 1
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append(Block(command, "\n".join(out), start + 1, "\n".join(comment)))
        comment = []
    return blocks


def render_script(blocks: list[Block], header: str) -> str:
    parts = [header.rstrip("\n")] if header.strip() else []
    parts += [(b.comment + "\n" if b.comment else "") + f"{b.command}\n----\n{b.expected}"
              for b in blocks]
    return "\n\n".join(parts) + "\n"


def script_header(text: str) -> str:
    """Leading comment lines (kept on rewrite)."""
    head: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            head.append(line)
        else:
            break
    return "\n".join(head)


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def parse_args(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    named: dict[str, str] = {}
    for tok in tokens:
        if "=" in tok:
            key, value = tok.split("=", 1)
            named[key] = value
        else:
            positional.append(tok)
    return positional, named


def _bool(value: str) -> bool:
    return value.lower() in ("true", "1", "yes", "on")


class LiveSnapshotStorage(MemoryStorage):
    """Like a real server: a snapshot requested by the leader reflects what it has applied
    (index and configuration), so a node added since the last compaction is a member of it."""

    def __init__(self) -> None:
        super().__init__()
        self.sim: SimNode | None = None

    def snapshot(self) -> Snapshot:
        held = super().snapshot()
        sim = self.sim
        if sim is None or sim.applied <= held.metadata.index:
            return held
        return self.create_snapshot(sim.applied, sim.conf_state, f"snap@{sim.applied}".encode())


@dataclasses.dataclass
class SimNode:
    node: RawNode
    storage: LiveSnapshotStorage
    config: Config
    conf_state: ConfState
    applied: int = 0


class Interaction:
    """The state of one script run: nodes, mailboxes and cut links."""

    def __init__(self) -> None:
        self.nodes: dict[int, SimNode] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.handlers: dict[str, Callable[[list[str], dict[str, str]], str]] = {
            "add-nodes": self.cmd_add_nodes,
            "campaign": self.cmd_campaign,
            "tick-election": self.cmd_tick_election,
            "tick-heartbeat": self.cmd_tick_heartbeat,
            "tick": self.cmd_tick,
            "deliver-msgs": self.cmd_deliver,
            "process-ready": self.cmd_process_ready,
            "stabilize": self.cmd_stabilize,
            "propose": self.cmd_propose,
            "propose-conf-change": self.cmd_propose_conf_change,
            "read-index": self.cmd_read_index,
            "transfer-leadership": self.cmd_transfer,
            "isolate": self.cmd_isolate,
            "partition": self.cmd_partition,
            "heal": self.cmd_heal,
            "report-snapshot": self.cmd_report_snapshot,
            "report-unreachable": self.cmd_report_unreachable,
            "compact": self.cmd_compact,
            "restart": self.cmd_restart,
            "raft-log": self.cmd_raft_log,
            "raft-state": self.cmd_raft_state,
            "status": self.cmd_status,
            "applied": self.cmd_applied,
        }

    def run(self, command: str) -> str:
        name, *tokens = command.split()
        positional, named = parse_args(tokens)
        try:
            out = self.handlers[name](positional, named)
        except QuorumError as exc:
            out = f"error: {type(exc).__name__}: {exc}"
        return out.rstrip("\n") or "ok"

    # --- node lifecycle ----------------------------------------------------------------------

    def _config(self, node_id: int, named: dict[str, str], applied: int) -> Config:
        read_only = ReadOnlyOption.LEASE_BASED if named.get("read-only") == "lease" else (
            ReadOnlyOption.SAFE)
        return Config(
            id=node_id,
            applied=applied,
            election_ticks=int(named.get("election", "10")),
            heartbeat_ticks=int(named.get("heartbeat", "1")),
            pre_vote=_bool(named.get("pre-vote", "true")),
            check_quorum=_bool(named.get("check-quorum", "true")),
            read_only_option=read_only,
            max_uncommitted_entries_size=int(named.get("max-uncommitted", str(64 << 20))),
            max_entries_per_msg=int(named.get("max-entries", "4096")),
            max_size_per_msg=int(named.get("max-size", str(1 << 20))),
            max_inflight_msgs=int(named.get("max-inflight", "256")),
            disable_proposal_forwarding=_bool(named.get("disable-forwarding", "false")),
            step_down_on_removal=_bool(named.get("step-down-on-removal", "true")),
            planted_bugs=frozenset(named["bugs"].strip("()").split(",")) if "bugs" in named
            else frozenset(),
        )

    def cmd_add_nodes(self, pos: list[str], named: dict[str, str]) -> str:
        count = int(pos[0])
        first = max(self.nodes, default=0) + 1
        new_ids = tuple(range(first, first + count))
        voters = _ids(named["voters"]) if "voters" in named else new_ids
        learners = _ids(named.get("learners", ""))
        empty = _bool(named.get("empty", "false"))
        conf = ConfState() if empty else ConfState(voters=voters, learners=learners)
        lines = []
        for node_id in new_ids:
            storage = LiveSnapshotStorage()
            applied = 0
            if not empty:
                meta = SnapshotMetadata(index=1, term=1, conf_state=conf)
                storage.apply_snapshot(Snapshot(metadata=meta))
                applied = 1
            config = self._config(node_id, named, applied)
            node = RawNode(config, storage, random.Random(node_id))
            self.nodes[node_id] = SimNode(node, storage, config, conf, applied)
            storage.sim = self.nodes[node_id]
            lines.append(f"{node_id}: {describe_conf_state(conf)} log=[{storage.first_index()},"
                         f"{storage.last_index()}]")
        return "\n".join(lines)

    def cmd_restart(self, pos: list[str], named: dict[str, str]) -> str:
        node_id = int(pos[0])
        sim = self.nodes[node_id]
        config = dataclasses.replace(sim.config, applied=sim.applied)
        sim.node = RawNode(config, sim.storage, random.Random(node_id * 1000 + sim.applied))
        self.queue = [m for m in self.queue if m.to != node_id]  # the inbox is lost
        hs = sim.storage.hard_state
        return f"{node_id}: restarted term={hs.term} vote={hs.vote} commit={hs.commit} " \
               f"applied={sim.applied}"

    # --- time and elections -----------------------------------------------------------------

    def cmd_campaign(self, pos: list[str], named: dict[str, str]) -> str:
        self.nodes[int(pos[0])].node.campaign()
        return ""

    def cmd_tick(self, pos: list[str], named: dict[str, str]) -> str:
        times = int(named.get("n", "1"))
        for node_id in _ids(" ".join(pos)):
            for _ in range(times):
                self.nodes[node_id].node.tick()
        return ""

    def cmd_tick_election(self, pos: list[str], named: dict[str, str]) -> str:
        """Tick until the node's (randomized) election timeout elapses."""
        for node_id in _ids(" ".join(pos)):
            raft = self.nodes[node_id].node.raft
            if raft.role == StateRole.LEADER:
                ticks = raft.config.election_ticks - raft.election_elapsed
            else:
                ticks = raft.randomized_election_timeout - raft.election_elapsed
            for _ in range(max(1, ticks)):
                self.nodes[node_id].node.tick()
        return ""

    def cmd_tick_heartbeat(self, pos: list[str], named: dict[str, str]) -> str:
        for node_id in _ids(" ".join(pos)):
            for _ in range(self.nodes[node_id].config.heartbeat_ticks):
                self.nodes[node_id].node.tick()
        return ""

    # --- the Ready loop ---------------------------------------------------------------------

    def process_ready(self, node_id: int) -> list[str]:
        sim = self.nodes[node_id]
        if not sim.node.has_ready():
            return []
        rd = sim.node.ready()
        out = [f"> {node_id} handling Ready {rd.number}"]
        out += ["  " + line for line in describe_ready(rd).splitlines()]
        if rd.snapshot is not None:
            sim.storage.apply_snapshot(rd.snapshot)
            sim.conf_state = rd.snapshot.metadata.conf_state
            sim.applied = rd.snapshot.metadata.index
        sim.storage.append(rd.entries)
        if rd.hard_state is not None:
            sim.storage.set_hard_state(rd.hard_state)
        for m in rd.early_messages + rd.messages:
            if (m.from_, m.to) not in self.cut:
                self.queue.append(m)
        for entry in rd.committed_entries:
            out += self._apply(sim, entry)
        sim.node.advance(rd)
        return out

    def _apply(self, sim: SimNode, entry: Entry) -> list[str]:
        sim.applied = entry.index
        if entry.type != EntryType.CONF_CHANGE:
            return []
        try:
            sim.conf_state = sim.node.apply_conf_change(ConfChange.decode(entry.data))
        except QuorumError as exc:
            return [f"  apply {describe_entry(entry)}: {type(exc).__name__}: {exc}"]
        return [f"  INFO {sim.node.id} switched to {describe_conf_state(sim.conf_state)}"]

    def cmd_process_ready(self, pos: list[str], named: dict[str, str]) -> str:
        out: list[str] = []
        for node_id in _ids(" ".join(pos)):
            out += self.process_ready(node_id) or [f"> {node_id}: no Ready"]
        return "\n".join(out)

    def deliver(
        self, targets: set[int] | None, drop: set[int], senders: set[int] | None = None
    ) -> list[str]:
        out: list[str] = []
        remaining: list[Message] = []
        for m in self.queue:
            if (targets is not None and m.to not in targets) or (
                senders is not None and m.from_ not in senders
            ):
                remaining.append(m)
            elif m.to in drop or m.to not in self.nodes:
                out.append("dropped: " + describe_message(m))
            else:
                out.append(describe_message(m))
                self.nodes[m.to].node.step(m)
        self.queue = remaining
        return out

    def cmd_deliver(self, pos: list[str], named: dict[str, str]) -> str:
        targets = set(_ids(" ".join(pos))) or None
        drop = set(_ids(named.get("drop", "")))
        senders = set(_ids(named["from"])) if "from" in named else None
        return "\n".join(self.deliver(targets, drop, senders))

    def cmd_stabilize(self, pos: list[str], named: dict[str, str]) -> str:
        """Ready/deliver until quiet. ``summary=true`` prints only message counts by type."""
        ids = sorted(_ids(" ".join(pos))) or sorted(self.nodes)
        out: list[str] = []
        counts: Counter[str] = Counter()
        for _ in range(10_000):
            busy = False
            for node_id in ids:
                lines = self.process_ready(node_id)
                busy = busy or bool(lines)
                out += lines
            targets = set(ids)
            pending = [m for m in self.queue if m.to in targets]
            if not busy and not pending:
                break
            for m in pending:
                counts[m.type.name] += 1
            out += self.deliver(targets, set())
        if _bool(named.get("summary", "false")):
            text = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            return "messages: " + (text or "none")
        return "\n".join(out)

    # --- requests ---------------------------------------------------------------------------

    def cmd_propose(self, pos: list[str], named: dict[str, str]) -> str:
        node = self.nodes[int(pos[0])].node
        count = int(named.get("n", "1"))
        for i in range(count):
            data = pos[1] if count == 1 else f"{pos[1]}{i + 1}"
            node.propose(data.encode())
        return ""

    def cmd_propose_conf_change(self, pos: list[str], named: dict[str, str]) -> str:
        node = self.nodes[int(pos[0])].node
        changes = tuple(ConfChangeSingle(_CC_TYPES[tok[0]], int(tok[1:])) for tok in pos[1:])
        transition = _TRANSITIONS[named.get("transition", "auto")]
        node.propose_conf_change(ConfChange(changes=changes, transition=transition))
        return ""

    def cmd_read_index(self, pos: list[str], named: dict[str, str]) -> str:
        self.nodes[int(pos[0])].node.read_index(pos[1].encode())
        return ""

    def cmd_transfer(self, pos: list[str], named: dict[str, str]) -> str:
        self.nodes[int(named["from"])].node.transfer_leader(int(named["to"]))
        return ""

    def cmd_report_snapshot(self, pos: list[str], named: dict[str, str]) -> str:
        ok = named.get("status", "ok") == "ok"
        self.nodes[int(pos[0])].node.report_snapshot(int(pos[1]), ok)
        return ""

    def cmd_report_unreachable(self, pos: list[str], named: dict[str, str]) -> str:
        self.nodes[int(pos[0])].node.report_unreachable(int(pos[1]))
        return ""

    # --- network ----------------------------------------------------------------------------

    def cmd_isolate(self, pos: list[str], named: dict[str, str]) -> str:
        node_id = int(pos[0])
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}
        self.queue = [m for m in self.queue if (m.from_, m.to) not in self.cut]
        return ""

    def cmd_partition(self, pos: list[str], named: dict[str, str]) -> str:
        """``partition (1 2) (3 4 5)``: cut every link between the groups."""
        groups = [set(_ids(g)) for g in re.findall(r"\(([^)]*)\)", " ".join(pos))]
        for a in groups:
            for b in groups:
                if a is not b:
                    self.cut |= {(x, y) for x in a for y in b}
        self.queue = [m for m in self.queue if (m.from_, m.to) not in self.cut]
        return ""

    def cmd_heal(self, pos: list[str], named: dict[str, str]) -> str:
        self.cut.clear()
        return ""

    # --- storage ----------------------------------------------------------------------------

    def cmd_compact(self, pos: list[str], named: dict[str, str]) -> str:
        sim = self.nodes[int(pos[0])]
        index = int(pos[1])
        if index > sim.applied:
            return f"error: cannot compact to {index} beyond applied {sim.applied}"
        sim.storage.create_snapshot(index, sim.conf_state, f"snap@{index}".encode())
        sim.storage.compact(index)
        return self.cmd_raft_log([pos[0]], {})

    # --- observation ------------------------------------------------------------------------

    def cmd_raft_log(self, pos: list[str], named: dict[str, str]) -> str:
        sim = self.nodes[int(pos[0])]
        log = sim.node.raft.raft_log
        out = [f"log=[{log.first_index()},{log.last_index()}] committed={log.committed} "
               f"applied={log.applied}"]
        out += [describe_entry(e) for e in log.all_entries()]
        return "\n".join(out)

    def cmd_raft_state(self, pos: list[str], named: dict[str, str]) -> str:
        out = []
        for node_id, sim in sorted(self.nodes.items()):
            r = sim.node.raft
            voter = "learner" if r.is_learner else "voter"
            if node_id not in r.trk.progress:
                voter = "none"
            out.append(f"{node_id}: {r.role.name} ({voter}) term={r.term} lead={r.lead} "
                       f"commit={r.raft_log.committed}")
        return "\n".join(out)

    def cmd_status(self, pos: list[str], named: dict[str, str]) -> str:
        return describe_status(self.nodes[int(pos[0])].node.status())

    def cmd_applied(self, pos: list[str], named: dict[str, str]) -> str:
        sim = self.nodes[int(pos[0])]
        return f"applied={sim.applied} {describe_conf_state(sim.conf_state)}"


def run_file(path: Path, rewrite: bool) -> list[str]:
    """Run a script; return mismatch descriptions (empty = pass). Rewrites in place if asked."""
    text = path.read_text()
    blocks = parse_script(text)
    env = Interaction()
    failures: list[str] = []
    for block in blocks:
        actual = env.run(block.command)
        if actual != block.expected:
            failures.append(
                f"{path.name}:{block.line}: {block.command}\n--- expected\n{block.expected}\n"
                f"--- actual\n{actual}"
            )
        block.expected = actual
    if rewrite:
        path.write_text(render_script(blocks, script_header(text)))
    return failures
