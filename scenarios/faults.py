"""Which partitions a scenario's ``[faults]`` table makes faulty: seeded draws.

Both sides need them: the ClientApp (client/faults.py) to misbehave, and the
server's oracle (server/build.py) to measure progress on the honest clients'
data, the only data a robust server can fit. Each draw has its own stream under
the scenario seed, apart from the data's and the clients' streams.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from scenarios.schema import Scenario

# tags that give each fault decision its own random stream under the scenario seed
BYZANTINE_STREAM, STRAGGLER_STREAM, DROPOUT_STREAM, CORRUPT_STREAM = 0xB1, 0x51, 0xD0, 0xC0


def byzantine_partitions(scenario: Scenario) -> frozenset[int]:
    """Partition ids whose every reply is corrupted (``faults.byzantine`` of ``clients.count``)."""
    return _draw(scenario.seed, BYZANTINE_STREAM, scenario.clients.count, scenario.faults.byzantine)


def untrusted_training(scenario: Scenario) -> frozenset[int]:
    """Partitions whose training contribution never honestly reaches the server: the
    Byzantine ones, except with ``uncalibrated`` (those lie in their probes only)."""
    if scenario.faults.byzantine_kind == "uncalibrated":
        return frozenset()
    return byzantine_partitions(scenario)


def straggler_partitions(scenario: Scenario) -> frozenset[int]:
    """Partition ids that reply ``faults.straggler_delay`` seconds late every round."""
    count = scenario.clients.count
    return _draw(scenario.seed, STRAGGLER_STREAM, count, int(round(scenario.faults.stragglers * count)))


@lru_cache(maxsize=32)
def _draw(seed: int, stream: int, count: int, size: int) -> frozenset[int]:
    picked = np.random.default_rng([seed, stream]).choice(count, size, replace=False)
    return frozenset(int(i) for i in picked)
