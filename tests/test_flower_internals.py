"""Guards for the Flower internals the inline engine relies on (fedsigma/engines/inline.py).

If one of these fails after a Flower upgrade, the message says what changed; fix
fedsigma/engines/inline.py (and pyproject's pin) before anything else.
"""

from __future__ import annotations

import importlib
from importlib import metadata

import pytest

PINNED = "1.42.0"


@pytest.fixture
def task_identity():
    """Flower's TaskIdentity, restored afterwards (it is process-global)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError as exc:
        pytest.fail(f"Flower changed: flwr.supercore.task_identity.TaskIdentity is gone ({exc})")
    saved = {k: vars(TaskIdentity).get(k) for k in ("_run_id", "_node_id", "_task_id")}
    yield TaskIdentity
    for key, value in saved.items():
        setattr(TaskIdentity, key, value)


def _identify(task_identity, run_id=5, node_id=1, task_id=3):
    task_identity.run_id = run_id
    task_identity.node_id = node_id
    task_identity.task_id = task_id


def test_flower_version_is_the_pinned_one():
    installed = metadata.version("flwr")
    assert installed == PINNED, f"Flower changed: flwr {installed} is installed, the inline engine is pinned to {PINNED}"
    import flwr

    module_version = getattr(flwr, "__version__", installed)
    assert module_version == PINNED, f"Flower changed: flwr.__version__ is {module_version}, expected {PINNED}"


def test_task_identity_fields_are_settable(task_identity):
    for name in ("run_id", "node_id", "task_id"):
        assert hasattr(type(task_identity), name) or hasattr(task_identity, name), (
            f"Flower changed: TaskIdentity has no {name}"
        )
    _identify(task_identity, run_id=41, node_id=42, task_id=43)
    got = (task_identity.run_id, task_identity.node_id, task_identity.task_id)
    assert got == (41, 42, 43), f"Flower changed: TaskIdentity run_id/node_id/task_id read back as {got}"


def test_instruction_message_takes_its_identity_from_task_identity(task_identity):
    from flwr.app import Message, RecordDict

    _identify(task_identity, run_id=7, node_id=1, task_id=9)
    try:
        msg = Message(RecordDict(), dst_node_id=1007, message_type="train", group_id="1")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Flower changed: a Message cannot be built outside the runtime with TaskIdentity set: {exc!r}")
    assert msg.metadata.run_id == 7, "Flower changed: Message metadata no longer takes run_id from TaskIdentity"
    assert msg.metadata.src_node_id == 1, "Flower changed: Message metadata no longer takes node_id from TaskIdentity"
    assert msg.metadata.dst_node_id == 1007


def test_message_id_is_settable_through_metadata_dict(task_identity):
    from flwr.app import Message, RecordDict

    _identify(task_identity)
    msg = Message(RecordDict(), dst_node_id=1007, message_type="train")
    assert "_message_id" in msg.metadata.__dict__, (
        "Flower changed: Metadata no longer keeps the message id in __dict__['_message_id']"
    )
    msg.metadata.__dict__["_message_id"] = "inline-42"
    assert msg.metadata.message_id == "inline-42", (
        "Flower changed: Metadata.message_id does not read back __dict__['_message_id']"
    )
    reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "inline-42", (
        "Flower changed: a reply no longer records the message id it answers"
    )
    assert (reply.metadata.src_node_id, reply.metadata.dst_node_id) == (1007, 1), (
        "Flower changed: a reply's src/dst node ids are no longer the instruction's dst/src"
    )
    assert reply.metadata.message_type == "train"


def test_error_replies_can_be_built(task_identity):
    from flwr.app import Error, Message, RecordDict

    from fedsigma.engines.inline import CLIENT_ERROR

    _identify(task_identity)
    msg = Message(RecordDict(), dst_node_id=1007, message_type="train")
    reply = Message(Error(CLIENT_ERROR, "boom"), reply_to=msg)
    assert reply.has_error() and not reply.has_content(), "Flower changed: Message(Error, reply_to=...) semantics"
    assert reply.error.code == CLIENT_ERROR and reply.error.reason == "boom"


def test_superlink_node_id_constant():
    from fedsigma.engines.inline import SUPERLINK_NODE_ID

    constant = importlib.import_module("flwr.common.constant")
    assert constant.SUPERLINK_NODE_ID == SUPERLINK_NODE_ID, (
        f"Flower changed: SUPERLINK_NODE_ID is {constant.SUPERLINK_NODE_ID}, inline engine uses {SUPERLINK_NODE_ID}"
    )


def test_client_app_routes_query_hello_and_train(task_identity):
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()
    called: list[str] = []

    @app.query("hello")
    def hello(msg, context):
        called.append("hello")
        return Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=msg)

    @app.train()
    def train(msg, context):
        called.append("train")
        return Message(RecordDict({"metrics": MetricRecord({"x": 2})}), reply_to=msg)

    _identify(task_identity)
    try:
        context = Context(1, 1007, {"partition-id": 0}, RecordDict(), {})
    except TypeError as exc:
        pytest.fail(f"Flower changed: Context(run_id, node_id, node_config, state, run_config) fails: {exc}")
    for message_type, expected in (("query.hello", "hello"), ("train", "train")):
        called.clear()
        msg = Message(RecordDict(), dst_node_id=1007, message_type=message_type)
        reply = app(msg, context)
        assert called == [expected], f"Flower changed: ClientApp.__call__ routed {message_type!r} to {called}"
        assert reply.content["metrics"]["x"] == (1 if expected == "hello" else 2)
    with pytest.raises(ValueError):
        app(Message(RecordDict(), dst_node_id=1007, message_type="query.absent"), context)


def test_grid_abstract_methods_are_all_implemented():
    from flwr.serverapp import Grid

    from fedsigma.engines.inline import InlineGrid
    from server.partition_grid import PartitionGrid

    for cls in (InlineGrid, PartitionGrid):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        assert not missing, f"Flower changed: Grid now requires {missing}, which {cls.__name__} lacks"
    required = set(getattr(Grid, "__abstractmethods__", ()))
    assert required <= set(dir(InlineGrid)), f"Flower changed: Grid requires {sorted(required)}"


def test_inline_grid_round_trip(task_identity):
    """The InlineGrid itself: message ids, routing by node id, errors as replies."""
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fedsigma.engines.inline import InlineGrid

    app = ClientApp()

    @app.train()
    def train(msg, context):
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("client 1 fails")
        return Message(RecordDict({"metrics": MetricRecord({"pid": context.node_config["partition-id"]})}),
                       reply_to=msg)

    _identify(task_identity)
    grid = InlineGrid(app, [{"partition-id": 0}, {"partition-id": 1}], {})
    nodes = grid.get_node_ids()
    assert len(nodes) == 2
    msgs = [grid.create_message(RecordDict(), "train", node, "1") for node in nodes]
    replies = grid.send_and_receive(msgs)
    assert [m.metadata.message_id for m in msgs] != ["", ""]
    assert len(set(m.metadata.message_id for m in msgs)) == 2
    assert not replies[0].has_error() and replies[0].content["metrics"]["pid"] == 0
    assert replies[1].has_error() and "client 1 fails" in replies[1].error.reason
    assert [r.metadata.reply_to_message_id for r in replies] == [m.metadata.message_id for m in msgs]
