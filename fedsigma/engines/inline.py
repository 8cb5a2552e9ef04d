"""The in-process engine: the real ServerApp and ClientApp, no Ray, no sockets.

:class:`InlineGrid` implements Flower's ``Grid`` by calling the ClientApp
directly, one Context per node, as a SuperNode would. Given a
:class:`client.cohort.FederationCohort` it also runs a whole round's clients in
one stacked computation (``train_cohort``), with the same numbers as one
ClientApp call per node; the round loop uses that when its strategy can.
Building a ``Message``
outside Flower's runtime needs its task identity set, and replies need a
message id: both are Flower internals, pinned by tests/test_flower_internals.py.
"""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as fedsigma_client_app
from client.cohort import FederationCohort, local_round_config
from client.faults import dropped, plan_for
from client.policy import PolicyError, node_settings
from scenarios.run_config import scenario_of
from shared import protocol as p
from shared.cohort import CohortReplies, CohortRequest
from shared.deadline import DeadlineExceeded, deadline

NODE_IDENTITY = ("partition-id", "num-partitions")  # node config keys that differ per node
CLIENT_ERROR = ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # what the real engines reply when a ClientApp raises


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
    cohort : bool
        ``client_app`` is fedsigma's own: hold the clients' data as one array
        (:class:`client.cohort.FederationCohort`) and offer ``handshake`` and
        ``train_cohort``. Only when every node has the same node settings (one
        policy), the shards derive from the scenario and no stragglers or Byzantine
        clients are injected (client.faults acts on single messages; dropouts the
        cohort applies itself); else, and when False, every round goes through the
        ClientApp.
    """

    def __init__(
        self, client_app: ClientApp, node_configs: list[dict], run_config: dict, run_id: int = 1,
        round_timeout: float | None = None, cohort: bool = False,
    ) -> None:
        self.client_app = client_app
        self.round_timeout = round_timeout
        self._deadline: float | None = None
        self._run_id = run_id
        self._run = None
        self._run_config = run_config
        self._ids = itertools.count(1)
        # Node ids are not partition ids in any real engine either.
        self._configs = {1000 + 7 * i: cfg for i, cfg in enumerate(node_configs)}
        self._contexts: dict[int, Context] = {}  # made on a node's first message: 10⁵ nodes cost nothing until used
        self._pending: dict[str, Message] = {}
        # the cohort computes what fedsigma's ClientApp computes: not for any other (or wrapped) app
        self.cohort = self._cohort(run_config) if cohort and client_app is fedsigma_client_app else None

    @property
    def contexts(self) -> dict[int, Context]:
        """Every node's Context, by node id (made now for nodes that had no message yet)."""
        return {node: self.context(node) for node in self._configs}

    def context(self, node: int) -> Context:
        """The node's Context (its state persists across rounds, as on a SuperNode)."""
        if node not in self._contexts:
            self._contexts[node] = Context(
                self._run_id, node, dict(self._configs[node]), RecordDict(), dict(self._run_config)
            )
        return self._contexts[node]

    def set_run(self, run) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self):  # noqa: D102
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: D102
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:  # noqa: D102
        return list(self._configs)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages; each gets a message id as the SuperLink would give it."""
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._configs:
                raise ValueError(f"no node {msg.metadata.dst_node_id}")
            mid = f"inline-{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            self._pending[mid] = msg
            ids.append(mid)
        if self.round_timeout is not None:
            self._deadline = time.monotonic() + self.round_timeout
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Run the ClientApp on each queued message; exceptions become error replies.
        A round of Flower's strategies (local training) runs as one cohort when it can."""
        message_ids = list(message_ids)
        local = self._local_round(message_ids)
        if local is not None:
            return local
        replies = []
        for mid in message_ids:
            msg = self._pending.pop(mid, None)
            if msg is None:
                continue
            context = self.context(msg.metadata.dst_node_id)
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

    # -- the cohort path (only with a FederationCohort) ----------------------
    def _cohort(self, run_config: dict) -> FederationCohort | None:
        shared = [{k: v for k, v in cfg.items() if k not in NODE_IDENTITY} for cfg in self._configs.values()]
        scenario = scenario_of(run_config)
        faults = plan_for(scenario)
        if not shared or any(s != shared[0] for s in shared) or scenario.data.kind == "nodes" \
                or faults.stragglers or faults.byzantine:  # these faults act on single messages
            return None
        self._faults = faults  # dropouts: the cohort leaves out whom the ClientApp would drop
        try:
            cohort = FederationCohort(run_config, node_settings(self.context(next(iter(self._configs)))))
        except PolicyError:  # refused: the ClientApp path gives every node its error reply
            return None
        self._partition = {node: int(cfg["partition-id"]) for node, cfg in self._configs.items()}
        return cohort

    def _local_round(self, message_ids: list[str]) -> list[Message] | None:
        """The replies to a round of local-training messages (Flower's FedAvg, FedAdam, …:
        client.client_app.local_training) computed as one cohort, or None when these
        messages are not such a round, or there is no cohort (whose federation has no
        stragglers, so the round's deadline cannot pass during the computation).

        Every message must carry the same w and config; each reply holds the node's
        new weights and counts as the ClientApp's, bit for bit (tests/test_cohort.py),
        with the node policy's μ fields; a client the faults drop gets Flower's error
        for a reply that never came, as from the ClientApp."""
        if self.cohort is None or not message_ids:
            return None
        msgs = [self._pending.get(mid) for mid in message_ids]
        if any(m is None or m.metadata.message_type != "train" or not m.has_content() for m in msgs):
            return None
        cfg = msgs[0].content.get(p.CONFIG)
        if cfg is None or str(cfg.get(p.MODE, "")) != p.MODE_LOCAL:
            return None
        first = msgs[0].content[p.ARRAYS][p.WEIGHTS]
        for m in msgs[1:]:  # the serialised bytes: decoding every copy of w costs more than the round
            if dict(m.content[p.CONFIG]) != dict(cfg) or m.content[p.ARRAYS][p.WEIGHTS].data != first.data:
                return None
        weights = first.numpy()
        rnd = int(cfg[p.ROUND])
        round_cfg = local_round_config(cfg)  # what client.client_app.local_training computes
        for mid in message_ids:
            del self._pending[mid]
        nodes = [m.metadata.dst_node_id for m in msgs]
        partitions = np.array([self._partition[n] for n in nodes], dtype=np.int64)
        dropped_out = self._dropped(partitions, rnd)
        got = self.cohort.train(partitions[~dropped_out], weights, round_cfg.to_config(), None,
                                np.zeros(int((~dropped_out).sum()), dtype=bool))
        by_partition = {int(pid): k for k, pid in enumerate(got.partitions)}
        secret = int(bool(self.cohort.policy.noise_secret))
        replies = []
        for msg, pid, dropped_now in zip(msgs, partitions.tolist(), dropped_out):
            k = by_partition.get(pid)
            if dropped_now:
                replies.append(dropped(msg))
            elif k is None:  # refused by the node policy
                replies.append(Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, got.refusal or "refused"),
                                       reply_to=msg))
            else:
                metrics = MetricRecord({
                    p.PARTITION_ID: pid, p.NUM_EXAMPLES: int(got.num_examples[k]),
                    p.MU_PROBE: float(got.metrics[p.MU_PROBE][k]), p.MU_SPENT: float(got.metrics[p.MU_SPENT][k]),
                    p.NOISE_SECRET: secret,
                })
                arrays = ArrayRecord({p.WEIGHTS: Array(weights + got.updates[k])})
                replies.append(Message(RecordDict({p.ARRAYS: arrays, p.METRICS: metrics}), reply_to=msg))
        return replies

    def _dropped(self, partitions: np.ndarray, rnd: int) -> np.ndarray:
        """Which partitions' replies this round ``faults.dropout`` loses (bool, per partition):
        the same per-(partition, round) draw as client.faults in the ClientApp. A dropped
        client computes nothing and sends nothing; the others' numbers do not depend on it."""
        return np.array([self._faults.drops(int(pid), rnd) for pid in partitions], dtype=bool)

    def handshake(self) -> dict[int, tuple[int, int]]:
        """node id → (partition id, local rows): what the ``hello`` query returns, without messages."""
        nodes = list(self._configs)
        rows = self.cohort.local_rows(np.array([self._partition[n] for n in nodes], dtype=np.int64))
        return {node: (self._partition[node], int(r)) for node, r in zip(nodes, rows)}

    def train_cohort(self, request: CohortRequest) -> CohortReplies:
        """Every requested node's reply to one round, computed together."""
        partitions = np.array([self._partition[n] for n in request.nodes], dtype=np.int64)
        rnd = int(request.config[p.ROUND])
        replying = ~self._dropped(partitions, rnd)
        return self.cohort.train(partitions[replying], request.weights, request.config, request.preconditioner,
                                 request.send_hessian[replying])


def run_inline(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, run_config: dict,
    node_configs: list[dict] | None = None, round_timeout: float | None = None, cohort: bool = False,
) -> None:
    """Run a ServerApp against ``num_nodes`` in-process ClientApps, like a simulation.

    Node k gets ``node_configs[k]``, by default ``partition-id = k``,
    ``num-partitions = num_nodes``. ``round_timeout``: see :class:`InlineGrid`. ``cohort``:
    ``client_app`` is fedsigma's own ClientApp and the scenario's shards derive from its
    seed, so a round may run all its clients at once (:class:`client.cohort.FederationCohort`).
    """
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 1
    configs = node_configs or [{"partition-id": k, "num-partitions": num_nodes} for k in range(num_nodes)]
    grid = InlineGrid(client_app, configs, run_config, round_timeout=round_timeout, cohort=cohort)
    context = Context(1, SUPERLINK_NODE_ID, {}, RecordDict(), dict(run_config))
    server_app(grid, context)
