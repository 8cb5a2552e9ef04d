"""The in-process engine: the real ServerApp and ClientApp, no Ray, no sockets.

:class:`InlineGrid` implements Flower's ``Grid`` by calling the ClientApp
directly, one Context per node, as a SuperNode would. Building a ``Message``
outside Flower's runtime needs its task identity set, and replies need a
message id: both are Flower internals, pinned by tests/test_flower_internals.py.
"""

from __future__ import annotations

import itertools
import json
import time
import traceback
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

from shared.deadline import DeadlineExceeded, deadline

SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
CLIENT_ERROR = 1  # an exception in the ClientApp, as Flower reports it


class InlineGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : ClientApp
    node_configs : list of dict
        One node config per node (e.g. ``partition-id``, ``num-partitions``).
    run_config : dict
        The run config every node sees.
    run_id : int
    round_timeout : float, optional
        Seconds a round's replies may take, as on a real federation whose clients
        run in parallel: each call is judged on its own clock (a call that takes
        longer is discarded and counts as failed), and injected straggler delays
        (client.faults, shared.deadline) all end at one deadline, the time the
        round's messages were pushed plus the timeout. Queries (the handshake) have
        no deadline. None: wait for every call.
    """

    def __init__(
        self, client_app: ClientApp, node_configs: list[dict], run_config: dict, run_id: int = 1,
        round_timeout: float | None = None,
    ) -> None:
        self.client_app = client_app
        self.round_timeout = round_timeout
        self._deadline: float | None = None
        self._run_id = run_id
        self._run = None
        self._ids = itertools.count(1)
        # Node ids are not partition ids in any real engine either.
        self.contexts = {
            1000 + 7 * i: Context(run_id, 1000 + 7 * i, dict(cfg), RecordDict(), dict(run_config))
            for i, cfg in enumerate(node_configs)
        }
        self._pending: dict[str, Message] = {}

    def set_run(self, run) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self):  # noqa: D102
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: D102
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages; each gets a message id as the SuperLink would give it."""
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {msg.metadata.dst_node_id}")
            mid = f"inline-{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            self._pending[mid] = msg
            ids.append(mid)
        if self.round_timeout is not None:
            self._deadline = time.monotonic() + self.round_timeout
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Run the ClientApp on each queued message; exceptions become error replies."""
        replies = []
        for mid in message_ids:
            msg = self._pending.pop(mid, None)
            if msg is None:
                continue
            context = self.contexts[msg.metadata.dst_node_id]
            timed = self._deadline is not None and not msg.metadata.message_type.startswith("query")
            started = time.monotonic()
            try:
                with deadline(self._deadline if timed else None):
                    reply = self.client_app(msg, context)
            except DeadlineExceeded:
                reply = self._late(msg)
            except Exception as exc:  # noqa: BLE001 — a failing client is data, not a crash
                reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
                reply = Message(Error(CLIENT_ERROR, reason), reply_to=msg)
            if timed and time.monotonic() - started > self.round_timeout:
                reply = self._late(msg)  # it came too late: the server has stopped waiting
            replies.append(reply)
        return replies

    def _late(self, msg: Message) -> Message:
        """What the server sees from a client that did not reply in time: Flower's error
        for a reply that never arrived."""
        reason = f"no reply within training.round_timeout = {self.round_timeout:g} s"
        return Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=msg)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:  # noqa: D102
        return self.pull_messages(self.push_messages(messages))


def run_inline(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, run_config: dict,
    node_configs: list[dict] | None = None, round_timeout: float | None = None,
) -> None:
    """Run a ServerApp against ``num_nodes`` in-process ClientApps, like a simulation.

    Node k gets ``node_configs[k]``, by default ``partition-id = k``,
    ``num-partitions = num_nodes``. ``round_timeout``: see :class:`InlineGrid`.
    """
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 1
    configs = node_configs or [{"partition-id": k, "num-partitions": num_nodes} for k in range(num_nodes)]
    grid = InlineGrid(client_app, configs, run_config, round_timeout=round_timeout)
    context = Context(1, SUPERLINK_NODE_ID, {}, RecordDict(), dict(run_config))
    server_app(grid, context)


def run_config_for(
    scenario_json: str, out_dir: str, engine: str, method: str = "gradcov", resume: bool = False
) -> dict:
    """The run config the CLI hands to every engine (values are TOML scalars)."""
    json.loads(scenario_json)  # fail here, not in a worker, if it is not JSON
    return {"scenario": "", "scenario-json": scenario_json, "out-dir": out_dir, "engine": engine, "method": method,
            "resume": resume}
