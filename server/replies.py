"""Server-side checks of every training reply: the network is untrusted.

A reply is kept only if it is exactly what its request asked for: the partition
the node declared at the handshake, counts within that partition's rows, arrays
of the exact shapes (no more probes than were asked for), in GradCov rounds the
exact dtypes (probes in the requested ``probe-dtype``, the update float64), and
finite values.
Anything else is dropped before a strategy sees it, with one log line naming the
partition and the reason, so one broken client can neither crash a round nor
reach the pooled Σ̂ or ḡ.

Shapes and dtypes are checked from the arrays' headers before any payload is decoded, so a
flood of probes costs the server its bytes on the wire, not a decoded copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from shared import protocol as p


@dataclass(frozen=True)
class Expected:
    """What a reply to one training request must hold.

    Parameters
    ----------
    partition : int
        The partition id the node declared at the handshake.
    rows : int
        N, the rows that partition declared at the handshake.
    dim : int
        d, the length of w.
    mode : str
        ``shared.protocol.MODE_GRADCOV`` (probes and an update), ``MODE_LOCAL``
        (new weights, for Flower's strategies) or ``MODE_FEDNL``.
    levels, probes : int
        Noise levels and probe gradients per level asked for (probes = 0: none).
    batch_size : int
        n, rows per probe batch: the partition must hold at least n rows to probe.
    hessian : bool
        Whether XᵀX/N was asked for (the Newton baseline).
    probe_dtype : str, default "float64"
        The dtype the probes were asked for in (``shared.protocol.PROBE_DTYPES``).
    """

    partition: int
    rows: int
    dim: int
    mode: str
    levels: int
    probes: int
    batch_size: int
    hessian: bool
    probe_dtype: str = "float64"


def expected_reply(request: Message, partition: int, rows: int) -> Expected:
    """The :class:`Expected` reply to a training ``request`` sent to ``partition``."""
    cfg = request.content[p.CONFIG]
    mode = str(cfg.get(p.MODE, p.MODE_GRADCOV))
    return Expected(
        partition=partition, rows=rows, dim=int(request.content[p.ARRAYS][p.WEIGHTS].shape[0]), mode=mode,
        levels=len(cfg.get(p.NOISE_LEVELS, [])), probes=int(cfg.get(p.PROBES, 0)),
        batch_size=int(cfg.get(p.BATCH_SIZE, 1)), hessian=bool(cfg.get(p.SEND_HESSIAN, False)),
        probe_dtype=str(cfg.get(p.PROBE_DTYPE, "float64")),
    )


def reply_problem(reply: Message, expected: Expected) -> str | None:
    """Why ``reply`` cannot be used (one line), or None if it is what was asked for."""
    try:
        return _counts_problem(reply, expected) or _arrays_problem(reply, expected)
    except (KeyError, TypeError, ValueError) as exc:  # missing records, undecodable payloads
        return f"malformed reply ({type(exc).__name__}: {exc})"


def _counts_problem(reply: Message, e: Expected) -> str | None:
    metrics = reply.content.metric_records.get(p.METRICS)
    if metrics is None:
        return f"no '{p.METRICS}' record"
    wanted = (p.PARTITION_ID, p.NUM_EXAMPLES) + ((p.LOCAL_ROWS,) if e.mode != p.MODE_LOCAL else ())
    for key in wanted:
        if not isinstance(metrics.get(key), int):
            return f"'{key}' missing or not an integer"
    if metrics[p.PARTITION_ID] != e.partition:
        return f"claims partition {metrics[p.PARTITION_ID]}, declared {e.partition} at the handshake"
    if not 1 <= metrics[p.NUM_EXAMPLES] <= e.rows:
        return f"'{p.NUM_EXAMPLES}' = {metrics[p.NUM_EXAMPLES]}, outside [1, {e.rows}] (its rows)"
    if e.mode != p.MODE_LOCAL:
        if metrics[p.LOCAL_ROWS] != e.rows:
            return f"'{p.LOCAL_ROWS}' = {metrics[p.LOCAL_ROWS]}, declared {e.rows} at the handshake"
        if e.probes > 0 and e.rows < e.batch_size:
            return f"{e.rows} rows, fewer than a probe batch of {e.batch_size}"
    return None


def _arrays_problem(reply: Message, e: Expected) -> str | None:
    arrays = reply.content.array_records.get(p.ARRAYS)
    if arrays is None:
        return f"no '{p.ARRAYS}' record"
    if e.mode == p.MODE_GRADCOV:
        probes = (e.levels, e.probes, e.dim) if e.probes > 0 else None
        shapes = {p.PROBE_GRADS: probes, p.UPDATE: (e.dim,)}
        if e.hessian:
            shapes[p.HESSIAN] = (e.dim, e.dim)
    elif e.mode == p.MODE_FEDNL:  # the compressed correction's arrays vary in shape, up to a d × d matrix
        shapes = {p.FEDNL_SHIFTED: (e.dim,), p.FEDNL_DISTANCE: (1,)}
        for key in arrays:
            if key.startswith(p.FEDNL_PREFIX):
                if int(np.prod(arrays[key].shape)) > e.dim * e.dim:
                    return f"'{key}' has shape {tuple(arrays[key].shape)}, more than a {e.dim} × {e.dim} matrix"
                shapes[key] = tuple(arrays[key].shape)
    else:
        shapes = {p.WEIGHTS: (e.dim,)}
    if set(arrays) != set(shapes):
        return f"arrays {sorted(arrays)}, expected {sorted(shapes)}"
    for key, shape in shapes.items():
        got = tuple(arrays[key].shape)
        if shape is None:  # no probes asked for: an empty array
            if int(np.prod(got)) != 0:
                return f"'{key}' has shape {got}; no probes were asked for"
            continue
        if got != shape:
            return f"'{key}' has shape {got}, expected {shape}"
    if e.mode == p.MODE_GRADCOV:  # the probes in the dtype asked for; the rest, like every other mode's, float64
        dtypes = {key: e.probe_dtype if key == p.PROBE_GRADS else "float64" for key in shapes}
        for key, dtype in dtypes.items():
            if str(arrays[key].dtype) != dtype:
                return f"'{key}' sent as {arrays[key].dtype}, expected {dtype}"
    for key in shapes:
        values = arrays[key].numpy()
        if values.shape != tuple(arrays[key].shape) or not np.issubdtype(values.dtype, np.number):
            return f"'{key}' does not decode to numbers of its declared shape"
        if not np.isfinite(values).all():
            return f"'{key}' has non-finite values"
    return None


def screen_replies(
    replies: list[Message], requests: dict[int, Message], partition_of: dict[int, int], rows_of: dict[int, int]
) -> tuple[list[Message], int]:
    """Keep the usable replies; log each dropped one with its partition and reason.

    Parameters
    ----------
    replies : list of Message
        Replies in the order they will be aggregated; error replies pass through
        untouched (they are failures, not rejections).
    requests : dict of int to Message
        The training request sent to each node id this round.
    partition_of, rows_of : dict of int to int
        Partition id and rows each node id declared at the handshake.

    Returns
    -------
    kept : list of Message
        The error replies and the valid ones, in the given order.
    rejected : int
        How many replies were dropped.
    """
    kept, seen = [], set()
    for reply in replies:
        if reply.has_error():
            kept.append(reply)
            continue
        node = reply.metadata.src_node_id
        request = requests.get(node)
        if request is None or node not in partition_of:
            reason, name = "no request was sent to this node this round", f"node {node}"
        elif node in seen:
            reason, name = "a second reply this round", f"partition {partition_of[node]}"
        else:
            name = f"partition {partition_of[node]}"
            reason = reply_problem(reply, expected_reply(request, partition_of[node], rows_of[node]))
        seen.add(node)
        if reason is None:
            kept.append(reply)
        else:
            log(WARNING, "reply from %s rejected: %s", name, reason)
    return kept, len(replies) - len(kept)
