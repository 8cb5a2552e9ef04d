"""The node's own policy: what this client agrees to compute, whatever the server asks.

Everything here comes from the **node config** — set by whoever starts the
SuperNode (``flower-supernode --node-config``), never by the server's run
config or round config. A Flower mod (:func:`enforce`) checks each message
before the ClientApp's handler runs and refuses, with an error reply that names
the policy key, any request below the node's floor:

=====================  =========  ==================================================
node config key        default    refuses / enforces
=====================  =========  ==================================================
``min-batch-size``     16         probe and training batches of fewer rows
``min-noise-var``      8.0        probe levels whose injected per-row target noise
                                  variance is smaller (the privacy floor: with the
                                  default bound, μ ≤ 2·10/√8 ≈ 7.1 per probe)
``label-bound``        10.0       clips probe targets to [−B, B] (tighter than the
                                  server's ``label-clip`` wins); μ = 2B/σ_inj
``max-probes``         4096       more probe batches per noise level and round
``max-probe-mib``      512        probe batches whose rows would take more memory
``max-local-steps``    100        more local steps per round
``allow-hessian``      false      ``send-hessian`` (XᵀX/N exactly) and FedNL's
                                  compressed Hessian corrections
``mu-budget``          inf        a round that would take the node's μ past it
``noise-secret``       ""         mixed into the seed of the node's batches and noise;
                                  without it they follow from the scenario seed, which
                                  the server knows (see below)
``data-files``         ""         files named in the run config that this node may
                                  read (``os.pathsep``-separated); its own
                                  ``data-path`` is always allowed
=====================  =========  ==================================================

Rounds must also come in increasing ``server-round`` order: a replayed round
(same batches, same noise) is refused. The accountant composes the μ-GDP of
every probe the node releases, in quadrature (Gaussian DP: μ_total = √Σμᵢ²),
keeps it in ``context.state`` (the deployment engine starts a fresh ClientApp
process per message, so module globals would forget it), and adds ``mu-probe``
and ``mu-spent`` to each training reply.

The noise is seeded from (scenario seed, partition, round), so runs are
reproducible on every engine — and a server that knows the seed can regenerate
the noise and subtract it. The μ values then hold only against parties who do
not know the seed; against the server they hold once the node sets a
``noise-secret`` (replies say whether it did: ``noise-secret`` = 1).

The Simulation Engine gives its virtual nodes no node config of their own: the
environment variable ``FEDSIGMA_NODE_CONFIG`` (a JSON object, set by whoever
starts the simulation — the nodes' operator there) supplies it, and the node
config proper wins over it.

Errors: a handler that raises gets a reply that names only the exception's type
(the node's log keeps the details), so no exception text and no file contents
leave the node; our own one-line errors (:class:`PolicyError`,
``NodeDataError``) pass as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from logging import ERROR
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from scenarios.loader import bundled_names
from scenarios.node_data import DATA_PATH, NodeDataError
from scenarios.run_config import DEFAULT_SCENARIO, SCENARIO, SCENARIO_JSON
from scenarios.schema import Scenario
from shared import protocol as p
from shared.calibration import injected_variances
from shared.deadline import DeadlineExceeded
from shared.privacy import label_mu

ENV_NODE_CONFIG = "FEDSIGMA_NODE_CONFIG"
STATE = "fedsigma-policy"  # context.state ConfigRecord: the accountant and the replay guard
FLOAT_BYTES = 8


class PolicyError(ValueError):
    """A request this node refuses; str() is one line naming the node config key."""


@dataclass(frozen=True)
class NodePolicy:
    """The node's floors and ceilings (see the module docstring for each key)."""

    min_batch_size: int = 16
    min_noise_var: float = 8.0
    label_bound: float = 10.0
    max_probes: int = 4096
    max_probe_mib: float = 512.0
    max_local_steps: int = 100
    allow_hessian: bool = False
    mu_budget: float = math.inf
    noise_secret: str = ""
    data_files: str = ""

    @classmethod
    def from_settings(cls, settings: dict) -> NodePolicy:
        """The policy in a node config dict (keys spelled with hyphens); unknown keys are
        ignored (a node config carries other things), bad values raise PolicyError."""
        values = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in settings:
                continue
            raw = settings[key]
            try:
                if field.type == "bool":
                    values[field.name] = _as_bool(raw)
                elif field.type == "int":
                    values[field.name] = int(raw)
                elif field.type == "float":
                    values[field.name] = float(raw)
                else:
                    values[field.name] = str(raw)
            except (TypeError, ValueError):
                raise PolicyError(f"node config {key}: cannot read {raw!r} as a {field.type}") from None
        policy = cls(**values)
        if not policy.label_bound > 0:
            raise PolicyError("node config label-bound: must be > 0 (the bound probe targets are clipped to)")
        return policy

    def allowed_files(self, node_config: dict) -> set[Path]:
        """Files named in the run config this node may read: ``data-files`` and its ``data-path``."""
        names = [n for n in self.data_files.split(os.pathsep) if n]
        if node_config.get(DATA_PATH):
            names.append(str(node_config[DATA_PATH]))
        return {Path(n).resolve() for n in names}


def node_settings(context: Context) -> dict:
    """The node's settings: ``FEDSIGMA_NODE_CONFIG`` (JSON) overlaid by the node config."""
    merged = {}
    text = os.environ.get(ENV_NODE_CONFIG, "")
    if text:
        try:
            merged.update(json.loads(text))
        except json.JSONDecodeError:
            raise PolicyError(f"environment {ENV_NODE_CONFIG}: not a JSON object") from None
    merged.update(dict(context.node_config))
    return merged


def noise_seed_words(context: Context) -> list[int]:
    """Extra seed words from the node's ``noise-secret`` (none without one: the batches and
    noise then follow from the scenario seed alone, reproducibly)."""
    return secret_words(node_settings(context))


def secret_words(settings: dict) -> list[int]:
    """The seed words of the ``noise-secret`` in these node settings (:func:`noise_seed_words`)."""
    secret = str(settings.get("noise-secret", "") or "")
    if not secret:
        return []
    digest = hashlib.sha256(secret.encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def _as_bool(raw) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "1", "yes"):
        return True
    if str(raw).lower() in ("false", "0", "no"):
        return False
    raise ValueError(raw)


# -- what the server may ask -------------------------------------------------
def check_run_config_paths(run_config: dict, allowed: set[Path]) -> None:
    """Refuse a run config that names a file this node did not allow.

    Reads only the JSON text: the scenario is not validated (which would open the
    file) until its paths have passed.
    """
    text = str(run_config.get(SCENARIO_JSON, "") or "")
    if not text:
        name = str(run_config.get(SCENARIO, "") or DEFAULT_SCENARIO)
        if name not in bundled_names() and Path(name).resolve() not in allowed:
            raise PolicyError(
                "node config data-files: the run config names a scenario file this node does not list; "
                "add it to data-files or send the scenario as scenario-json"
            )
        return
    try:
        data = json.loads(text).get("data") or {}
    except (json.JSONDecodeError, AttributeError):
        raise PolicyError("run config scenario-json: not a JSON object") from None
    named = [data.get("path")] + list(data.get("paths") or [])
    for name in named:
        if name is not None and Path(str(name)).resolve() not in allowed:
            raise PolicyError(
                "node config data-files: the run config names a data file this node does not list; "
                "the node reads only its data-path and the files in its data-files"
            )


def check_round(policy: NodePolicy, cfg: ConfigRecord, local_rows: int | None = None) -> float:
    """Refuse a training round below the node's floors; return μ of one probe (per level max).

    Also clips the round's ``label-clip`` to the node's bound, in place.

    Parameters
    ----------
    policy : NodePolicy
    cfg : ConfigRecord
        The round config the server sent (modified: ``label-clip``).
    local_rows : int, optional
        N, for the injected variance's finite-population factor; None = assume N = ∞
        (the smallest variance the server can make this node inject).

    Returns
    -------
    float
        μ-GDP (on labels) of the least-noisy probe, 0.0 when the round asks for no probes.
    """
    mode = str(cfg.get(p.MODE, p.MODE_GRADCOV))
    n = int(cfg.get(p.BATCH_SIZE, 0))
    steps = int(cfg.get(p.LOCAL_STEPS, 0))
    minibatch = str(cfg.get(p.TRAIN_GRADIENT, "full")) != "full" or steps > 0 or mode == p.MODE_LOCAL
    probes = int(cfg.get(p.PROBES, 0)) if mode == p.MODE_GRADCOV else 0
    if (probes > 0 or minibatch) and n < policy.min_batch_size:
        raise PolicyError(f"node policy min-batch-size: batch-size {n} < {policy.min_batch_size} rows")
    if steps > policy.max_local_steps:
        raise PolicyError(f"node policy max-local-steps: {steps} local steps > {policy.max_local_steps}")
    if bool(cfg.get(p.SEND_HESSIAN, False)) and not policy.allow_hessian:
        raise PolicyError("node policy allow-hessian: this node does not send XᵀX/N (send-hessian refused)")
    if mode == p.MODE_FEDNL and not policy.allow_hessian:  # compressed XᵀX/N, all of it within d rounds
        raise PolicyError("node policy allow-hessian: this node does not send Hessian corrections (FedNL refused)")
    if probes <= 0:
        return 0.0
    if probes > policy.max_probes:
        raise PolicyError(f"node policy max-probes: {probes} probes > {policy.max_probes} per round")
    levels = [float(c) for c in cfg.get(p.NOISE_LEVELS, [])]
    if not 1 <= len(levels) <= 2 or not all(math.isfinite(c) and c >= 0 for c in levels):
        raise PolicyError("node policy min-noise-var: noise-levels must be 1 or 2 finite multipliers ≥ 0")
    natural = float(cfg.get(p.NATURAL_VAR, 0.0))
    if not math.isfinite(natural) or natural < 0:
        raise PolicyError("node policy min-noise-var: noise-var must be a finite number ≥ 0")
    rows = local_rows if local_rows is not None else 1 << 62
    injected = injected_variances(levels, min(n, rows), max(rows, n), natural)
    if injected.min() < policy.min_noise_var:
        raise PolicyError(
            f"node policy min-noise-var: the round asks for injected target-noise variance "
            f"{injected.min():.4g} < {policy.min_noise_var:g} per row"
        )
    server_clip = float(cfg.get(p.LABEL_CLIP, 0.0) or 0.0)
    bound = min(server_clip, policy.label_bound) if server_clip > 0 else policy.label_bound
    cfg[p.LABEL_CLIP] = bound
    return label_mu(bound, float(injected.min()))


def check_memory(policy: NodePolicy, cfg: ConfigRecord, dim: int) -> None:
    """Refuse probe batches whose gathered rows (levels·probes·n·d floats) exceed ``max-probe-mib``."""
    probes = int(cfg.get(p.PROBES, 0))
    levels = len(cfg.get(p.NOISE_LEVELS, []))
    mib = levels * probes * int(cfg.get(p.BATCH_SIZE, 0)) * dim * FLOAT_BYTES / 2**20
    if mib > policy.max_probe_mib:
        raise PolicyError(f"node policy max-probe-mib: the probes would take {mib:.0f} MiB > {policy.max_probe_mib:g}")


# -- the accountant ----------------------------------------------------------
@dataclass
class Ledger:
    """μ-GDP this node has released in the run: Σμ² over probes, and the last round answered."""

    mu_squared: float = 0.0
    last_round: int = 0
    probes: int = 0

    @classmethod
    def load(cls, context: Context) -> Ledger:
        if STATE not in context.state:
            return cls()
        rec = context.state[STATE]
        return cls(float(rec["mu-squared"]), int(rec["last-round"]), int(rec["probes"]))

    def save(self, context: Context) -> None:
        context.state[STATE] = ConfigRecord(
            {"mu-squared": self.mu_squared, "last-round": self.last_round, "probes": self.probes}
        )

    @property
    def spent(self) -> float:
        return math.sqrt(self.mu_squared)


def round_mu_squared(mu_probe: float, cfg: ConfigRecord) -> float:
    """Σμ² of one round's releases: every probe batch at every level, each a fresh Gaussian
    mechanism (no credit for subsampling), at the least-noisy level's μ (an upper bound)."""
    releases = int(cfg.get(p.PROBES, 0)) * len(cfg.get(p.NOISE_LEVELS, []))
    return 0.0 if releases == 0 else releases * mu_probe**2


# -- the mod -------------------------------------------------------------------
def enforce(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower mod: apply the node policy to one message, run the handler, account the reply."""
    try:
        settings = node_settings(context)
        policy = NodePolicy.from_settings(settings)
        check_run_config_paths(context.run_config, policy.allowed_files(settings))
        if msg.metadata.message_type != "train" or not msg.has_content():
            return _safe(call_next, msg, context)
        cfg = msg.content[p.CONFIG]
        ledger = Ledger.load(context)
        rnd = int(cfg.get(p.ROUND, 0))
        if rnd <= ledger.last_round:
            raise PolicyError(
                f"node policy replay: round {rnd} after round {ledger.last_round} was answered (rounds must increase)"
            )
        mu_probe = check_round(policy, cfg)
        if p.ARRAYS in msg.content and p.WEIGHTS in msg.content[p.ARRAYS]:
            check_memory(policy, cfg, msg.content[p.ARRAYS][p.WEIGHTS].numpy().size)
        after = ledger.mu_squared + round_mu_squared(mu_probe, cfg)
        if math.sqrt(after) > policy.mu_budget:
            raise PolicyError(
                f"node policy mu-budget: this round would take μ to {math.sqrt(after):.4g} > "
                f"{policy.mu_budget:g}; the node answers no more probes in this run"
            )
    except (PolicyError, NodeDataError) as exc:
        log(ERROR, "fedsigma node policy: %s", exc)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=msg)
    except (ValueError, TypeError, KeyError) as exc:  # a malformed round config: name the type only
        log(ERROR, "fedsigma node policy: malformed round config", exc_info=exc)
        reason = f"node policy: malformed round config ({type(exc).__name__}; details in the node's log)"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
    reply = _safe(call_next, msg, context)
    if reply.has_error():
        return reply
    ledger.mu_squared, ledger.last_round = after, rnd
    ledger.probes += int(cfg.get(p.PROBES, 0)) * len(cfg.get(p.NOISE_LEVELS, []))
    ledger.save(context)
    if p.METRICS in reply.content:
        reply.content[p.METRICS][p.MU_PROBE] = float(mu_probe)
        reply.content[p.METRICS][p.MU_SPENT] = float(ledger.spent)
        reply.content[p.METRICS][p.NOISE_SECRET] = int(bool(policy.noise_secret))
    return reply


def _safe(call_next, msg: Message, context: Context) -> Message:
    """Run the handler; an exception becomes a reply naming only its type (details in the node's log)."""
    try:
        return call_next(msg, context)
    except DeadlineExceeded:  # the inline engine's round deadline (shared.deadline): a missing reply, not a failure
        raise
    except (PolicyError, NodeDataError) as exc:
        log(ERROR, "fedsigma node: %s", exc)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 — the text could hold data or file contents
        log(ERROR, "fedsigma ClientApp failed", exc_info=exc)
        reason = f"ClientApp raised {type(exc).__name__} (details in the node's log)"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)


# -- nodes that fedsigma starts itself ----------------------------------------
def settings_admitting(scenario: Scenario, send_hessian: bool = False) -> dict:
    """Node settings that admit this scenario's honest protocol, for nodes fedsigma starts.

    Whoever starts a node is its operator. When the CLI starts the nodes (inline,
    simulation, deployment without ``--no-supernodes``) the CLI's user asked for this
    scenario, so each default floor is lowered (and each ceiling raised) only as far as
    the scenario needs; SuperNodes started by someone else keep their own config.

    Parameters
    ----------
    scenario : Scenario
        The validated scenario, with the method's overrides applied.
    send_hessian : bool
        The method asks for XᵀX/N (the Newton baseline).

    Returns
    -------
    dict
        Node config entries (hyphenated keys), only those that differ from the defaults.
    """
    default, proto = NodePolicy(), scenario.protocol
    n, steps = proto.batch_size, scenario.training.local_steps
    levels = [proto.calibration * proto.differential_low, proto.calibration] if proto.differential else [proto.calibration]
    # the smallest injection the honest protocol asks of any client (N = ∞ bounds all)
    injected = float(injected_variances(levels, n, 1 << 62, scenario.natural_noise_var()).min())
    mib = len(levels) * proto.probes * n * scenario.dim() * FLOAT_BYTES / 2**20
    files = [str(f) for f in ([scenario.data.path] + list(scenario.data.paths or [])) if f is not None]
    wanted = {
        "min-batch-size": min(default.min_batch_size, n),
        "min-noise-var": min(default.min_noise_var, injected),
        "max-probes": max(default.max_probes, proto.probes),
        "max-probe-mib": max(default.max_probe_mib, math.ceil(mib)),
        "max-local-steps": max(default.max_local_steps, steps),
        "allow-hessian": bool(send_hessian),
        "data-files": os.pathsep.join(files),
    }
    return {k: v for k, v in wanted.items() if v != getattr(default, k.replace("-", "_"))}
