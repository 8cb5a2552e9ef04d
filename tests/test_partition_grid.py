"""server/partition_grid.py: the Grid view every strategy runs on screens each training
reply (server/replies.py). One test per reason a reply is dropped, each through the real
ClientApp on the inline grid with one partition's reply edited on its way back; good
replies pass through unchanged, in partition order, and every drop is logged by partition."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import app as client_app
from fedsigma.engines.inline import InlineGrid
from scenarios.loader import validate
from scenarios.node_data import node_configs
from scenarios.run_config import encode
from server.methods import strategy_for
from server.partition_grid import PartitionGrid, array_bytes, screen_cohort
from shared import protocol as p
from shared.cohort import CohortReplies

ROWS, DIM, PROBES, CLIENTS, BAD = 40, 4, 3, 6, 2  # BAD: the partition whose reply is edited
SCENARIO = validate({"seed": 3, "data": {"dim": DIM, "rows_per_client": ROWS}, "clients": {"count": CLIENTS},
                     "protocol": {"batch_size": 16, "probes": PROBES, "probe_dtype": "float32"},
                     "stop": {"max_rounds": 2}})


@pytest.fixture
def flwr_log():
    """The messages Flower's logger emits during the test."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _grid(edit=None, hello=None, inner=InlineGrid) -> PartitionGrid:
    """A PartitionGrid over the inline grid; ``edit(reply)`` changes partition BAD's training
    reply, ``hello(pid, reply)`` any handshake reply."""

    def app(msg: Message, context) -> Message:
        reply = client_app(msg, context)
        pid = int(context.node_config["partition-id"])
        if msg.metadata.message_type.startswith("query"):
            return hello(pid, reply) if hello else reply
        if pid == BAD and edit is not None:
            edit(reply)
        return reply

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    return PartitionGrid(inner(app, node_configs(SCENARIO), encode(SCENARIO, "", "inline")), CLIENTS, timeout=10)


def _round(grid: PartitionGrid) -> list[Message]:
    """Round 1 of GradCov at w = 1 through ``grid``: the replies it passes on."""
    strategy, config, _, _ = strategy_for(SCENARIO, "gradcov")
    messages = strategy.configure_train(1, ArrayRecord({p.WEIGHTS: Array(np.ones(DIM))}), config, grid)
    return grid.send_and_receive(messages)


def _pid(reply: Message) -> int:
    return int(reply.content[p.METRICS][p.PARTITION_ID])


def _content(reply: Message) -> tuple:
    """Everything a strategy reads from a reply: its arrays' bytes and its metrics."""
    arrays = reply.content[p.ARRAYS]
    return ({k: (arrays[k].shape, arrays[k].data) for k in arrays}, dict(reply.content[p.METRICS]))


@pytest.fixture(scope="module")
def honest() -> dict[int, tuple]:
    """Each partition's reply content when nobody edits anything."""
    return {_pid(r): _content(r) for r in _round(_grid())}


def test_good_replies_pass_unchanged_in_partition_order(honest, flwr_log):
    grid = _grid()
    replies = _round(grid)
    assert [_pid(r) for r in replies] == list(range(CLIENTS))
    assert {_pid(r): _content(r) for r in replies} == honest
    assert grid.rejected == grid.failed == 0
    assert not [r for r in flwr_log if "rejected" in r.getMessage()]
    arrays = replies[0].content[p.ARRAYS]
    assert arrays[p.PROBE_GRADS].shape == (1, PROBES, DIM) and np.isfinite(arrays[p.PROBE_GRADS].numpy()).all()


def _set_metric(key, value):
    def edit(reply):
        reply.content[p.METRICS][key] = value
    return edit


def _set_array(key, array):
    def edit(reply):
        reply.content[p.ARRAYS][key] = array
    return edit


def _header_only(shape) -> Array:
    """An array whose header declares ``shape`` and whose payload does not decode at all."""
    return Array(dtype="float64", shape=shape, stype="numpy.ndarray", data=b"\x00not a numpy payload")


def _lying_header(shape, real) -> Array:
    """An array whose header declares ``shape`` over a payload of another shape."""
    return Array(dtype="float64", shape=shape, stype="numpy.ndarray", data=Array(np.zeros(real)).data)


REJECTIONS = {
    # non-finite values
    "nan-update": (_set_array(p.UPDATE, Array(np.full(DIM, np.nan))), f"'{p.UPDATE}' has non-finite values"),
    "inf-probe": (_set_array(p.PROBE_GRADS, Array(np.full((1, PROBES, DIM), -np.inf, dtype=np.float32))),
                  f"'{p.PROBE_GRADS}' has non-finite values"),
    # dtypes, read from the headers: probes in the one asked for, the update always float64
    "probe-dtype": (_set_array(p.PROBE_GRADS, Array(np.zeros((1, PROBES, DIM)))),
                    f"'{p.PROBE_GRADS}' sent as float64, expected float32"),
    "update-dtype": (_set_array(p.UPDATE, Array(np.zeros(DIM, dtype=np.float16))),
                     f"'{p.UPDATE}' sent as float16, expected float64"),
    # shapes, read from the arrays' headers: the first payload never decodes, so only the header was read
    "header-shape": (_set_array(p.UPDATE, _header_only((DIM + 1,))),
                     f"'{p.UPDATE}' has shape ({DIM + 1},), expected ({DIM},)"),
    "header-lies": (_set_array(p.UPDATE, _lying_header((DIM,), (DIM + 3,))),
                    f"'{p.UPDATE}' does not decode to numbers of its declared shape"),
    "missing-array": (lambda reply: reply.content[p.ARRAYS].pop(p.UPDATE), "arrays ['probes'], expected"),
    # more probes than were asked for
    "extra-probe": (_set_array(p.PROBE_GRADS, Array(np.zeros((1, PROBES + 1, DIM)))),
                    f"'{p.PROBE_GRADS}' has shape (1, {PROBES + 1}, {DIM}), expected (1, {PROBES}, {DIM})"),
    "extra-level": (_set_array(p.PROBE_GRADS, Array(np.zeros((2, PROBES, DIM)))),
                    f"'{p.PROBE_GRADS}' has shape (2, {PROBES}, {DIM})"),
    # counts out of bounds
    "zero-examples": (_set_metric(p.NUM_EXAMPLES, 0), f"'{p.NUM_EXAMPLES}' = 0, outside [1, {ROWS}]"),
    "inflated-examples": (_set_metric(p.NUM_EXAMPLES, ROWS + 1), f"'{p.NUM_EXAMPLES}' = {ROWS + 1}, outside [1, {ROWS}]"),
    "local-rows": (_set_metric(p.LOCAL_ROWS, ROWS * 10), f"'{p.LOCAL_ROWS}' = {ROWS * 10}, declared {ROWS}"),
    "float-count": (_set_metric(p.NUM_EXAMPLES, 12.0), f"'{p.NUM_EXAMPLES}' missing or not an integer"),
    # another partition's id
    "claims-other-partition": (_set_metric(p.PARTITION_ID, 0), f"claims partition 0, declared {BAD}"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_each_bad_reply_is_dropped_and_logged_with_its_partition(case, honest, flwr_log):
    edit, reason = REJECTIONS[case]
    grid = _grid(edit)
    replies = _round(grid)
    assert [_pid(r) for r in replies] == [k for k in range(CLIENTS) if k != BAD]
    assert {_pid(r): _content(r) for r in replies} == {k: v for k, v in honest.items() if k != BAD}
    assert grid.rejected == 1 and grid.failed == 0
    lines = [r.getMessage() for r in flwr_log if "rejected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"reply from partition {BAD} rejected: {reason}"), lines


class _Echo(InlineGrid):
    """An inline grid that delivers partition BAD's reply twice (a replayed message)."""

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        return replies + [r for r in replies if r.content.metric_records
                          and r.content[p.METRICS].get(p.PARTITION_ID) == BAD and r.metadata.message_type == "train"]


def test_a_second_reply_from_one_partition_is_dropped(honest, flwr_log):
    grid = _grid(inner=_Echo)
    replies = _round(grid)
    assert [_pid(r) for r in replies] == list(range(CLIENTS))  # the first copy is kept
    assert {_pid(r): _content(r) for r in replies} == honest
    assert grid.rejected == 1
    lines = [r.getMessage() for r in flwr_log if "rejected" in r.getMessage()]
    assert lines == [f"reply from partition {BAD} rejected: a second reply this round"]


def test_two_nodes_claiming_one_partition_fail_the_handshake():
    def hello(pid, reply):
        if pid == BAD:
            reply.content[p.METRICS][p.PARTITION_ID] = BAD + 1
        return reply

    with pytest.raises(RuntimeError, match=rf"two nodes claim the same partition id: .*{BAD + 1}, {BAD + 1}"):
        _grid(hello=hello)


def _cohort(probes: np.ndarray) -> CohortReplies:
    count = len(probes)
    return CohortReplies(np.arange(count), probes, np.ones((count, DIM)), np.full(count, ROWS), np.full(count, ROWS))


def test_cohort_replies_are_screened_like_messages_and_probes_widened(flwr_log):
    probes = np.ones((CLIENTS, 1, PROBES, DIM), dtype=np.float16)
    probes[BAD, 0, 1, 2] = np.inf  # a float16 probe that overflowed
    kept, rejected = screen_cohort(_cohort(probes), "float16")
    assert rejected == 1 and list(kept.partitions) == [k for k in range(CLIENTS) if k != BAD]
    assert kept.probes.dtype == np.float64 and np.array_equal(kept.probes, np.ones((CLIENTS - 1, 1, PROBES, DIM)))
    lines = [r.getMessage() for r in flwr_log if "rejected" in r.getMessage()]
    assert lines == [f"reply from partition {BAD} rejected: non-finite values"]


def test_cohort_probes_in_another_dtype_than_asked_are_all_rejected(flwr_log):
    kept, rejected = screen_cohort(_cohort(np.ones((CLIENTS, 1, PROBES, DIM))), "float16")
    assert rejected == CLIENTS and len(kept) == 0
    lines = [r.getMessage() for r in flwr_log if "rejected" in r.getMessage()]
    assert lines[0] == f"reply from partition 0 rejected: '{p.PROBE_GRADS}' sent as float64, expected float16"


def test_bytes_are_counted_in_the_probes_own_dtype():
    wide, half = array_bytes((1, PROBES, DIM)), array_bytes((1, PROBES, DIM), "float16")
    assert wide - half == PROBES * DIM * 6  # 8 bytes a float64, 2 a float16, the same header
    assert half == len(Array(np.zeros((1, PROBES, DIM), dtype=np.float16)).data)
