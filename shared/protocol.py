"""Names of the records and keys exchanged between the ServerApp and ClientApp.

One message type per round (``train``). Server → client: ArrayRecord ``arrays``
with ``w`` (d,) and, only when clients run local steps and P changed, ``P``
(d, d); ConfigRecord ``config`` holding a :class:`RoundConfig`. Client → server:
ArrayRecord ``arrays`` with ``probes`` (levels, k, d) and ``update`` (d,), and
MetricRecord ``metrics`` with the counts below — nothing else (see the audit
test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# server → client arrays
WEIGHTS = "w"
PRECONDITIONER = "P"

# server → client config
MODE = "mode"  # what the client computes: MODE_GRADCOV (default) or MODE_LOCAL
MODE_GRADCOV = "gradcov"  # probes + training gradient/update (GradCovStrategy)
MODE_LOCAL = "local"  # FedAvg-style local training, new weights back (Flower's strategies)
MODE_FEDNL = "fednl"  # FedNL's compressed Hessian learning (server.fednl, client.fednl)
FEDNL_COMPRESSOR = "fednl-compressor"  # "rank" or "topk"
FEDNL_LEVEL = "fednl-level"  # R or K
FEDNL_ALPHA = "fednl-alpha"  # Hessian learning rate
SEND_HESSIAN = "send-hessian"  # the Newton baseline asks for XᵀX/N once
ROUND = "server-round"
BATCH_SIZE = "batch-size"
PROBES = "probes"
NOISE_LEVELS = "noise-levels"
NATURAL_VAR = "noise-var"
LABEL_CLIP = "label-clip"  # B > 0 clips probe targets to [−B, B]; 0 = none
TRAIN_GRADIENT = "train-gradient"
NOISY_TARGETS = "noisy-targets"
LOCAL_STEPS = "local-steps"
LOCAL_LR = "local-lr"
PROBE_DTYPE = "probe-dtype"  # the probes' dtype on the wire: one of PROBE_DTYPES
PROBE_DTYPES = ("float64", "float32", "float16")

# client → server arrays
PROBE_GRADS = "probes"
UPDATE = "update"
HESSIAN = "hessian"  # only when SEND_HESSIAN is set: the Newton baseline, not GradCov
FEDNL_PREFIX = "fednl-c-"  # FedNL's compressed correction: fednl-c-values + -vectors (rank) or -index + -values (topk)
FEDNL_SHIFTED = "fednl-shifted"  # g_i = (H_i + l_i·I)·w − ∇f_i(w), (d,)
FEDNL_DISTANCE = "fednl-distance"  # l_i = ‖H_i − ∇²f_i‖_F, (1,)

# client → server counts
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"  # rows behind the training contribution (Flower's weighting key)
LOCAL_ROWS = "local-rows"  # N, for the finite-population factor
# added by the node's policy (client/policy.py) to training replies: label μ-GDP
MU_PROBE = "mu-probe"  # μ of this round's least-noisy probe (0 without probes)
MU_SPENT = "mu-spent"  # μ of everything the node released in this run so far, √Σμ²
NOISE_SECRET = "noise-secret"  # 1: the node seeds its noise with a secret, so μ holds against the server too

REPLY_ARRAYS = frozenset({PROBE_GRADS, UPDATE})
REPLY_COUNTS = frozenset({PARTITION_ID, NUM_EXAMPLES, LOCAL_ROWS})
REPLY_PRIVACY = frozenset({MU_PROBE, MU_SPENT, NOISE_SECRET})

# the start-up handshake (query.hello): which partition a node serves
HELLO = "hello"


_KEYS = {  # RoundConfig field → ConfigRecord key
    "mode": MODE,
    "server_round": ROUND,
    "batch_size": BATCH_SIZE,
    "probes": PROBES,
    "noise_levels": NOISE_LEVELS,
    "natural_var": NATURAL_VAR,
    "label_clip": LABEL_CLIP,
    "train_gradient": TRAIN_GRADIENT,
    "noisy_targets": NOISY_TARGETS,
    "local_steps": LOCAL_STEPS,
    "local_learning_rate": LOCAL_LR,
    "send_hessian": SEND_HESSIAN,
    "probe_dtype": PROBE_DTYPE,
}


@dataclass(frozen=True)
class RoundConfig:
    """What the server asks one client to compute in one GradCov round (the ``config`` record).

    Plain values only, so it maps one-to-one onto a Flower ``ConfigRecord``:
    ``ConfigRecord(cfg.to_config())`` on the server, ``RoundConfig.from_config(record)``
    on the client, which checks every type instead of hand-casting strings.

    Parameters
    ----------
    server_round : int
        The round, from 1; seeds the client's batch and noise draws.
    batch_size : int
        n, the rows in one probe batch (and in a training mini-batch).
    mode : str, default "gradcov"
        ``MODE_GRADCOV``: probes and a training gradient or update.
    probes : int, default 0
        Probe gradients per noise level; 0 sends none.
    noise_levels : tuple of float, default (1.0,)
        Calibration multipliers c, one per level: (c,) or, for differential
        injection, (c_low, c_high). The client injects target noise of total
        variance c·n per level.
    natural_var : float, default 0
        σ₀², the natural target-noise variance the client subtracts (0 if unknown),
        in squared target units.
    label_clip : float, default 0
        B > 0: probe targets are clipped to [−B, B] (target units) before noise is
        added; 0: no clipping.
    train_gradient : {"full", "minibatch"}, default "full"
        The training gradient: all local rows, or one n-row batch.
    noisy_targets : bool, default False
        Train on targets with the top level's calibrated noise added.
    local_steps : int, default 0
        0: send the training gradient. > 0: take that many P-preconditioned local
        steps and send the update.
    local_learning_rate : float, default 0.5
        The local step size.
    send_hessian : bool, default False
        Also send XᵀX/N (the Newton baseline asks once per node). Written to the
        record only when True.
    probe_dtype : {"float64", "float32", "float16"}, default "float64"
        The dtype the probe gradients travel in. Probes are noisy on purpose
        (target noise of variance c·n), so rounding them to float32 or float16
        adds far less error than they already carry; the training gradient
        always travels in float64.
    """

    server_round: int
    batch_size: int
    mode: str = MODE_GRADCOV
    probes: int = 0
    noise_levels: tuple[float, ...] = (1.0,)
    natural_var: float = 0.0
    label_clip: float = 0.0
    train_gradient: str = "full"
    noisy_targets: bool = False
    local_steps: int = 0
    local_learning_rate: float = 0.5
    send_hessian: bool = False
    probe_dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.probe_dtype not in PROBE_DTYPES:
            raise ValueError(f"round config: {PROBE_DTYPE} = {self.probe_dtype!r}, expected one of "
                             f"{', '.join(PROBE_DTYPES)}")

    def to_config(self) -> dict[str, int | float | str | bool | list[float]]:
        """The record's entries: protocol key → value (``send-hessian`` only when True)."""
        values = asdict(self)
        values["noise_levels"] = [float(c) for c in self.noise_levels]
        if not self.send_hessian:
            del values["send_hessian"]
        return {_KEYS[name]: value for name, value in values.items()}

    @classmethod
    def from_config(cls, record: Mapping) -> RoundConfig:
        """Read a round config from a record's entries (other keys are ignored).

        Parameters
        ----------
        record : Mapping
            A ``ConfigRecord`` or dict with :mod:`shared.protocol` keys.

        Raises
        ------
        ValueError
            Naming the key, when a required key is missing, a value has the wrong type
            or ``probe-dtype`` is not one of PROBE_DTYPES.
        """
        values = {}
        for field in fields(cls):
            key = _KEYS[field.name]
            if key in record:
                values[field.name] = _cast(key, record[key], field.default, field.name)
        missing = [_KEYS[f.name] for f in fields(cls) if f.default is MISSING and f.name not in values]
        if missing:
            raise ValueError(f"round config: missing {', '.join(missing)}")
        return cls(**values)


def _cast(key: str, value, default, name: str):
    """The value as its field's type, read from the field's default (the required fields
    are ints); a bool is never taken for a number, nor a number for a bool."""
    try:
        if name == "noise_levels":
            if isinstance(value, (str, bytes)) or any(isinstance(c, bool) for c in value):
                raise TypeError
            return tuple(float(c) for c in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(value, bool):
            raise TypeError
        if isinstance(default, float):
            return float(value)
        if int(value) != value:
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"round config: {key} = {value!r} has the wrong type") from None
