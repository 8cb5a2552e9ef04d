"""A Grid view that orders nodes by partition id and counts payload bytes.

Node ids are random per run and replies arrive in any order; a strategy that
samples positions in ``get_node_ids()`` and aggregates replies in the order
given is then deterministic on every engine. Any Flower strategy can run on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.replies import screen_replies
from shared import protocol as p
from shared.cohort import CohortReplies, CohortRequest

HANDSHAKE_FAILED = "handshake failed: "  # the engines find a node's reason after it in the log
POLL_SECONDS = 0.1  # Flower's deployment Grid polls for replies every 3 s; we ask sooner


def payload_bytes(message: Message) -> int:
    """Bytes of the serialized arrays a message carries (all its ArrayRecords)."""
    if not message.has_content():
        return 0
    return sum(
        len(array.data) for record in message.content.array_records.values() for array in record.values()
    )


class PartitionGrid(Grid):
    """Wraps a Grid: nodes in partition order, replies sorted the same way, bytes counted.

    Parameters
    ----------
    grid : Grid
        The engine's grid (inline, simulation or deployment).
    expected_nodes : int
        Wait until this many nodes are connected before the handshake.
    timeout : float
        Seconds to wait for nodes and for handshake replies.
    rejoin_timeout : float
        Seconds to wait for the handshake of a node that connects mid-run.

    Membership is refreshed whenever the node list is asked for (once a round): a
    node that left keeps its place in the list (positions, and so sampling, stay
    the same) and messages to it count as failed without being sent; a node that
    connects under a new id is handshaken, and if it serves the partition of a node
    that left, takes that node's place — a restarted SuperNode is used again.
    """

    def __init__(self, grid: Grid, expected_nodes: int, timeout: float = 120.0, rejoin_timeout: float = 30.0) -> None:
        self.inner = grid
        self.rejoin_timeout = rejoin_timeout
        self._refused: set[int] = set()  # connected nodes that will not serve: never asked again
        self._standby: dict[int, int] = {}  # partition → a newcomer serving it, until its old node leaves
        self._standby_rows: dict[int, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.failed = 0  # sampled nodes with no usable reply: errors and timeouts
        self.rejected = 0  # replies dropped by server.replies (malformed, wrong shapes, non-finite)
        nodes = wait_for_nodes(grid, expected_nodes, timeout)
        if self.cohort:  # the engine answers the handshake for all its nodes at once
            known = grid.handshake()
            self.partition_of = {node: known[node][0] for node in nodes}
            self.rows_of = {node: known[node][1] for node in nodes}
            self._order = sorted(self.partition_of, key=self.partition_of.__getitem__)
            self._online = set(self._order)
            return
        hello = [
            Message(RecordDict(), dst_node_id=node, message_type=f"query.{p.HELLO}") for node in nodes
        ]
        replies = exchange(grid, hello, timeout)
        bad = [r for r in replies if r.has_error()]
        if bad or len(replies) != len(nodes):
            reason = bad[0].error.reason if bad else f"{len(replies)} of {len(nodes)} nodes answered"
            raise RuntimeError(f"{HANDSHAKE_FAILED}{reason}")
        self.partition_of = {
            r.metadata.src_node_id: int(r.content[p.METRICS][p.PARTITION_ID]) for r in replies
        }
        self.rows_of = {
            r.metadata.src_node_id: int(r.content[p.METRICS][p.NUM_EXAMPLES]) for r in replies
        }
        ids = sorted(self.partition_of.values())
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"two nodes claim the same partition id: {ids}")
        self._order = sorted(self.partition_of, key=self.partition_of.__getitem__)
        self._online = set(self._order)

    @property
    def cohort(self) -> bool:
        """Whether the engine can run a round's clients together (``train_cohort``)."""
        return getattr(self.inner, "cohort", None) is not None

    def train_cohort(self, request: CohortRequest) -> CohortReplies:
        """One round through the engine's cohort path: replies in partition order,
        bytes counted as the same round's messages would be (probes in the dtype they
        came in), checked as server.replies checks messages, probes widened to float64."""
        sizes = (array_bytes(request.weights.shape) + request.preconditioner_sent * (
            0 if request.preconditioner is None else array_bytes(request.preconditioner.shape)))
        self.bytes_down += int(np.sum(sizes))
        replies = self.inner.train_cohort(request).in_partition_order()
        per_reply = (array_bytes(replies.probes.shape[1:], str(replies.probes.dtype))
                     + array_bytes(replies.updates.shape[1:], str(replies.updates.dtype)))
        self.bytes_up += per_reply * len(replies) + sum(array_bytes(h.shape) for h in replies.hessians.values())
        replies, rejected = screen_cohort(replies, str(request.config.get(p.PROBE_DTYPE, "float64")))
        self.rejected += rejected
        self.failed += len(request.nodes) - len(replies) - rejected
        return replies

    # -- the view ------------------------------------------------------------
    def get_node_ids(self) -> list[int]:
        """One node id per partition, in partition order: the node serving it now, or
        the last one that did if it left (see the class docstring)."""
        self._refresh()
        return list(self._order)

    def counters(self) -> dict[str, int]:
        """The running counters (bytes, failed and other client counts), for a checkpoint."""
        return {name: value for name, value in vars(self).items() if type(value) is int}

    def restore(self, counters: dict[str, int]) -> None:
        """Continue from :meth:`counters` of an earlier run."""
        for name, value in counters.items():
            setattr(self, name, value)

    def _refresh(self) -> None:
        """Note which nodes are connected; handshake newcomers, and let one that serves
        the partition of a node that left take its place (a newcomer whose partition's
        node still counts as connected — a crashed SuperNode does until its heartbeat
        lapses — waits on standby until it does not)."""
        self._online = set(self.inner.get_node_ids())
        new = sorted(n for n in self._online
                     if n not in self.partition_of and n not in self._refused and n not in self._standby.values())
        if new:
            self._handshake(new)
        by_partition = {pid: node for node, pid in self.partition_of.items()}
        for pid, node in list(self._standby.items()):
            old = by_partition[pid]
            if node not in self._online:  # gone again before it was used
                del self._standby[pid], self._standby_rows[node]
            elif old not in self._online:
                log(INFO, "partition %d is back as node %d (was node %d)", pid, node, old)
                self._order[self._order.index(old)] = node
                del self.partition_of[old], self.rows_of[old], self._standby[pid]
                self.partition_of[node], self.rows_of[node] = pid, self._standby_rows.pop(node)

    def _handshake(self, nodes: list[int]) -> None:
        """Ask newcomers which partition they serve; a node that does not answer in time
        is asked again at the next refresh."""
        hello = [Message(RecordDict(), dst_node_id=node, message_type=f"query.{p.HELLO}") for node in nodes]
        known = set(self.partition_of.values())
        for reply in exchange(self.inner, hello, self.rejoin_timeout):
            node = reply.metadata.src_node_id
            try:
                pid = int(reply.content[p.METRICS][p.PARTITION_ID])
                rows = int(reply.content[p.METRICS][p.NUM_EXAMPLES])
            except (KeyError, TypeError, ValueError):  # an error reply, or not our ClientApp
                pid, rows = -1, 0
            if pid not in known:
                log(WARNING, "node %d joined but is not used: %s", node,
                    "its handshake failed" if pid < 0 else f"this run has no partition {pid}")
                self._refused.add(node)
                continue
            self._standby[pid], self._standby_rows[node] = node, rows

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Send, wait, and return the replies in partition order; count bytes and failures.

        Replies that are not what their request asked for (server.replies) are
        dropped and counted in ``rejected``; the others in ``failed``.
        """
        messages = list(messages)
        self.bytes_down += sum(payload_bytes(m) for m in messages)
        # a node that left gets no message: it counts as failed at once, not after the timeout
        replies = exchange(self.inner, [m for m in messages if m.metadata.dst_node_id in self._online], timeout)
        self.bytes_up += sum(payload_bytes(r) for r in replies)
        rank = {node: i for i, node in enumerate(self._order)}
        replies = sorted(replies, key=lambda r: rank.get(r.metadata.src_node_id, len(rank)))
        requests = {m.metadata.dst_node_id: m for m in messages}
        replies, rejected = screen_replies(replies, requests, self.partition_of, self.rows_of)
        self.rejected += rejected
        self.failed += len(messages) - rejected - sum(1 for r in replies if not r.has_error())
        self._log_failures(messages, replies, timeout)
        return replies

    def _log_failures(self, messages: list[Message], replies: list[Message], timeout: float | None) -> None:
        """One log line per error reply and per request left unanswered, naming the partition."""
        for reply in replies:
            if reply.has_error():
                log(WARNING, "%s", error_line(reply, self.partition_of))
        answered = {r.metadata.src_node_id for r in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered:
                why = "its node left" if node not in self._online else f"no reply within {timeout} s"
                log(WARNING, "%s: %s", _name(node, self.partition_of), why)

    # -- delegated -----------------------------------------------------------
    def set_run(self, run) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self):  # noqa: D102
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: D102
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        messages = list(messages)
        self.bytes_down += sum(payload_bytes(m) for m in messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        replies = list(self.inner.pull_messages(message_ids))
        self.bytes_up += sum(payload_bytes(r) for r in replies)
        return replies


def screen_cohort(replies: CohortReplies, probe_dtype: str) -> tuple[CohortReplies, int]:
    """The cohort replies :func:`server.replies.reply_problem` would keep (probes in
    ``probe_dtype``, updates float64, finite values), probes widened to float64, and how
    many were dropped; one log line per dropped reply, naming its partition."""
    wrong = [(name, str(a.dtype), want) for name, a, want in
             ((p.PROBE_GRADS, replies.probes, probe_dtype), (p.UPDATE, replies.updates, "float64"))
             if str(a.dtype) != want]
    keep = (np.isfinite(replies.probes).reshape(len(replies), -1).all(axis=1)
            & np.isfinite(replies.updates).all(axis=1) & (not wrong))
    for pid in replies.partitions[~keep]:
        reason = f"'{wrong[0][0]}' sent as {wrong[0][1]}, expected {wrong[0][2]}" if wrong else "non-finite values"
        log(WARNING, "reply from partition %d rejected: %s", pid, reason)
    kept = replies if keep.all() else replies.take(np.flatnonzero(keep))
    return replace(kept, probes=kept.probes.astype(np.float64, copy=False)), int(len(replies) - keep.sum())


@lru_cache(maxsize=64)
def array_bytes(shape: tuple[int, ...], dtype: str = "float64") -> int:
    """Bytes of an array of this shape and dtype serialized as a Flower ``Array`` (what
    :func:`payload_bytes` counts for it)."""
    return len(Array(np.zeros(shape, dtype=dtype)).data)


def error_line(reply: Message, partition_of: dict[int, int]) -> str:
    """An error reply on one line: ``partition K: <reason>`` (the reason's first line),
    or the error code when the reply gives no reason."""
    reason = " ".join(str(reply.error.reason).split("\n")[0].split())
    return f"{_name(reply.metadata.src_node_id, partition_of)}: {reason or f'error code {reply.error.code}'}"


def _name(node: int, partition_of: dict[int, int]) -> str:
    return f"partition {partition_of[node]}" if node in partition_of else f"node {node}"


def exchange(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    """Push messages, then pull their replies every POLL_SECONDS until all are in or
    ``timeout`` s have passed (Grid.send_and_receive, with a shorter poll)."""
    waiting = {mid for mid in grid.push_messages(messages) if mid}  # None: not accepted by the SuperLink
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(list(waiting)))
        replies += got
        waiting -= {r.metadata.reply_to_message_id for r in got}
        if not waiting or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(POLL_SECONDS)
    return replies


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Poll until ``expected`` nodes are connected (the count is racy at start-up)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} nodes connected after {timeout:.0f} s")
        time.sleep(0.2)
