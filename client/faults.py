"""Fault injection inside the ClientApp: dropouts, stragglers and Byzantine replies.

The scenario's ``[faults]`` table (scenarios.schema.Faults) decides, from the
scenario seed alone, which partitions are Byzantine or stragglers and which
replies drop in which round, so every engine (and a rerun) injects the same
faults. Each decision has its own random stream, separate from the stream an
honest client draws its probes from, so the honest clients' numbers do not
change when faults are switched on.

A dropped client does not answer. A ClientApp must return a message, so it
returns the error Flower's SuperLink itself puts in place of a reply that never
came (``REPLY_MESSAGE_UNAVAILABLE``): the server sees exactly what a lost reply
looks like once its time is up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, Error, Message
from flwr.common.constant import ErrorCode

from scenarios.faults import CORRUPT_STREAM, DROPOUT_STREAM, byzantine_partitions, straggler_partitions
from scenarios.schema import Scenario
from shared import protocol as p
from shared.deadline import sleep

SCALE = 1e6  # byzantine_kind = "scale"
COUNT_FACTOR = 10**9  # byzantine_kind = "inflate_count"
FLOOD_PROBES = 10**6  # byzantine_kind = "flood": probe gradients sent, over all levels


@dataclass(frozen=True)
class FaultPlan:
    """Which partitions misbehave, and how.

    Parameters
    ----------
    seed : int
        The scenario seed.
    dropout : float
        Probability that a client's reply to a training round is lost, drawn
        independently per (partition, round).
    straggler_delay : float
        Seconds a straggler sleeps before it replies.
    stragglers, byzantine : frozenset of int
        Partition ids that straggle every round / corrupt every reply.
    byzantine_kind : str
        One of scenarios.schema.BYZANTINE_KINDS.
    """

    seed: int
    dropout: float
    straggler_delay: float
    stragglers: frozenset[int]
    byzantine: frozenset[int]
    byzantine_kind: str

    @property
    def active(self) -> bool:
        """Whether any fault is injected at all."""
        return self.dropout > 0 or bool(self.stragglers) or bool(self.byzantine)

    def drops(self, pid: int, rnd: int) -> bool:
        """Whether partition ``pid``'s reply in round ``rnd`` is lost."""
        if self.dropout == 0.0:
            return False
        return bool(np.random.default_rng([self.seed, DROPOUT_STREAM, pid, rnd]).random() < self.dropout)

    def straggle(self, pid: int) -> None:
        """Sleep ``straggler_delay`` seconds if ``pid`` is a straggler (shared.deadline.sleep:
        on the inline engine the sleep ends at the round's deadline and the call fails)."""
        if pid in self.stragglers and self.straggler_delay > 0:
            sleep(self.straggler_delay)

    def noise_levels(self, pid: int, levels: list[float]) -> list[float]:
        """The noise multipliers c this client actually uses: all 0 for an
        ``uncalibrated`` Byzantine client, else ``levels`` unchanged."""
        if pid in self.byzantine and self.byzantine_kind == "uncalibrated":
            return [0.0] * len(levels)
        return levels

    def corrupt(self, reply: Message, pid: int, rnd: int) -> Message:
        """``reply`` as a Byzantine ``pid`` would send it (edited in place), or unchanged."""
        if pid not in self.byzantine or reply.has_error():
            return reply
        kind = self.byzantine_kind
        metrics = reply.content[p.METRICS]
        if kind == "inflate_count":
            metrics[p.NUM_EXAMPLES] = int(metrics[p.NUM_EXAMPLES]) * COUNT_FACTOR
            return reply
        arrays = reply.content[p.ARRAYS]
        rng = np.random.default_rng([self.seed, CORRUPT_STREAM, pid, rnd])
        for key in list(arrays):
            arrays[key] = Array(corrupt_array(arrays[key].numpy(), kind, rng, probes=key == p.PROBE_GRADS))
        return reply


def corrupt_array(x: np.ndarray, kind: str, rng: np.random.Generator, probes: bool = False) -> np.ndarray:
    """One array of a reply as a Byzantine client of ``kind`` sends it.

    Parameters
    ----------
    x : ndarray
        The honest array (probes (levels, k, d), an update (d,) or weights (d,)).
    kind : str
        ``nan``/``inf`` fill it; ``wrong_shape`` adds one entry along the last
        axis; ``scale`` multiplies it by 1e6; ``sign_flip`` negates it;
        ``random`` replaces it by Gaussian noise of the same root-mean-square;
        ``flood`` repeats the probes to FLOOD_PROBES over all levels, also when
        the round asked for none (other arrays unchanged). ``uncalibrated`` and ``inflate_count`` leave arrays
        alone (they act on the noise levels and on the counts).
    rng : Generator
        Draws the ``random`` replacement.
    probes : bool
        Whether ``x`` holds the probe gradients.

    Returns
    -------
    ndarray in ``x``'s dtype (probes may travel in float32 or float16): the
    attack reaches the server's robust screens, not just its dtype check.
    """
    with np.errstate(over="ignore"):  # ``scale`` may overflow float16: sent as inf, as a real client would
        return _corrupted(np.asarray(x, dtype=float), kind, rng, probes).astype(np.asarray(x).dtype, copy=False)


def _corrupted(x: np.ndarray, kind: str, rng: np.random.Generator, probes: bool) -> np.ndarray:
    if kind == "nan":
        return np.full_like(x, np.nan)
    if kind == "inf":
        return np.full_like(x, np.inf)
    if kind == "wrong_shape":
        return np.concatenate([x, np.zeros(x.shape[:-1] + (1,))], axis=-1) if x.ndim else np.zeros(2)
    if kind == "scale":
        return x * SCALE
    if kind == "sign_flip":
        return -x
    if kind == "random":
        rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
        return rng.normal(0.0, rms or 1.0, size=x.shape)
    if kind == "flood" and probes:  # even in a round that asked for none: a flooder floods
        levels, dim = max(x.shape[0], 1), x.shape[-1]
        return np.resize(x if x.size else np.ones((levels, 1, dim)), (levels, FLOOD_PROBES // levels, dim))
    return x


def dropped(msg: Message) -> Message:
    """The reply of a client that never answered ``msg``: Flower's own error for a
    reply that did not arrive."""
    return Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, "no reply (faults.dropout)"), reply_to=msg)


def plan_for(scenario: Scenario) -> FaultPlan:
    """The scenario's fault plan (the faulty partitions: scenarios.faults)."""
    f = scenario.faults
    return FaultPlan(
        seed=scenario.seed, dropout=f.dropout, straggler_delay=f.straggler_delay,
        stragglers=straggler_partitions(scenario), byzantine=byzantine_partitions(scenario),
        byzantine_kind=f.byzantine_kind,
    )
