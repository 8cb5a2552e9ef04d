"""The random draws of a round's clients: which rows each batch uses, and the noise on its targets.

Every client draws from its own streams of a counter-based generator (numpy's
:class:`~numpy.random.Philox`): the key is the round's (scenario seed, round,
the node's noise-secret words), the client's partition id picks its range of
counters. A client's draws therefore depend only on the scenario, the round, its
own partition and its own row count — never on which other clients were sampled
or in what order — and a cohort's streams are independent by construction
(disjoint counter ranges under one key), with no hashing per client.

Clients with consecutive partition ids own consecutive counter ranges, so one
call reads the bits of a whole run of clients (:func:`stream_words`); everything
after that — rows without replacement, Gaussian noise — is computed for all
clients at once. A lone ClientApp runs the same code for a cohort of one, so both
paths see the same numbers, bit for bit.

Each client's fixed-length stream, in order (P = levels × probes batches of n
rows, S = the gradients its training takes, max(local_steps, 1)):

1. P·n uniforms: the probe batches' rows;
2. S·n uniforms: the training batches' rows (mini-batch training only);
3. P·n normals: the probe targets' noise.

and, with noisy targets only, a second stream of S·m normals, the training
targets' noise (m = n, or N for full-data gradients: its length depends on the
client, :func:`ragged_stream_words`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

DRAWS_STREAM = 0xD7  # seed word that keeps these streams apart from the scenario's other generators
MAX_GAP = 8  # partition ids further apart start a new read (stream_words)
_HALF_ULP = 0.5


def round_key(seed: int, server_round: int, noise_words: list[int] | tuple[int, ...] = ()) -> np.ndarray:
    """The Philox key of one round's client streams, shape (2,) uint64.

    Parameters
    ----------
    seed : int
        The scenario seed.
    server_round : int
    noise_words : list of int
        Seed words from the node's ``noise-secret`` (client.policy.secret_words); empty without one.
    """
    entropy = [int(seed), DRAWS_STREAM, int(server_round), *(int(x) for x in noise_words)]
    return np.random.SeedSequence(entropy).generate_state(2, np.uint64)


def _philox(key: np.ndarray) -> tuple[np.random.Philox, dict, np.ndarray]:
    """A Philox generator under ``key``, the state dict that restarts it, and that dict's counter."""
    counter = np.zeros(4, dtype=np.uint64)
    state = {"bit_generator": "Philox", "state": {"counter": counter, "key": np.asarray(key, dtype=np.uint64)},
             "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return np.random.Philox(key=key), state, counter


def stream_words(key: np.ndarray, partitions: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 64-bit words of each client's fixed-length stream, shape (c, count).

    Client p's stream is the Philox blocks after counter p·B (B = ⌈count/4⌉ blocks of
    four words): clients with consecutive ids own consecutive counter ranges, so one
    call reads a whole run of them, and a client's words are the same whether it is
    read alone or in any run. Runs are cut where ids are more than ``MAX_GAP`` apart
    (reading the skipped clients' words costs less than another call below that).

    Parameters
    ----------
    key : ndarray of uint64, shape (2,)
        :func:`round_key`.
    partitions : ndarray of int, shape (c,)
        Each client's partition id, ≥ 0.
    count : int
        Words per client: the same for every client of a round.
    """
    partitions = np.asarray(partitions, dtype=np.int64)
    width = 4 * -(-count // 4)
    out = np.empty((len(partitions), count), dtype=np.uint64)
    if count == 0 or len(partitions) == 0:
        return out
    generator, state, counter = _philox(key)
    order = np.argsort(partitions, kind="stable")
    ids = partitions[order]
    cuts = np.flatnonzero(np.diff(ids) > MAX_GAP) + 1
    for run in np.split(np.arange(len(ids)), cuts):
        first, last = int(ids[run[0]]), int(ids[run[-1]])
        counter[0] = first * (width // 4)  # < 2⁶⁴ blocks: the counter's first word holds it
        generator.state = state  # copies the counter: the stream restarts there
        words = generator.random_raw((last - first + 1) * width).reshape(-1, width)
        out[order[run]] = words[ids[run] - first, :count]
    return out


def ragged_stream_words(key: np.ndarray, partitions: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first ``counts[c]`` words of each client's variable-length stream, back to back.

    A second family of streams, for draws whose number depends on the client (noise on
    all N rows): client p's starts at counter (0, 0, p, 1), apart from every fixed-length
    stream (:func:`stream_words`), and is read with one call per client.

    Returns
    -------
    words : ndarray of uint64, shape (sum(counts),)
    starts : ndarray of int64, shape (c,)
        Where each client's words begin in ``words``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    words = np.empty(int(counts.sum()), dtype=np.uint64)
    generator, state, counter = _philox(key)
    counter[3] = 1
    for pid, lo, count in zip(np.asarray(partitions).tolist(), starts.tolist(), counts.tolist()):
        counter[2] = pid
        generator.state = state
        words[lo : lo + count] = generator.random_raw(count)
    return words, starts


def unit_uniforms(bits: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) from 64-bit words: the top 53 bits, as numpy's ``random`` makes them."""
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def standard_normals(bits: np.ndarray) -> np.ndarray:
    """N(0, 1) draws from 64-bit words by the inverse normal CDF of a uniform in (0, 1)
    (the top 52 bits plus half a step, so neither 0 nor 1 occurs; |z| ≤ 8.1)."""
    return ndtri(((bits >> np.uint64(12)).astype(np.float64) + _HALF_ULP) * 2.0**-52)


def rows_without_replacement(u: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """n distinct rows of each of b sets: the first n steps of a Fisher–Yates shuffle.

    Step j swaps position j with position j + ⌊u_j·(N − j)⌋, so each ordered n-tuple
    of distinct rows has probability (N − n)!/N! (up to the 2⁻⁵³ resolution of u).
    All sets run their steps together over one ragged table of their rows.

    Parameters
    ----------
    u : ndarray of shape (b, n)
        Uniforms in [0, 1).
    sizes : ndarray of int, shape (b,)
        N of each set, ≥ n.

    Returns
    -------
    ndarray of int64, shape (b, n): indices into each set's rows.
    """
    b, n = u.shape
    sizes = np.asarray(sizes, dtype=np.int64)
    if b == 0 or n == 0:
        return np.zeros((b, n), dtype=np.int64)
    if sizes.min() < n:
        raise ValueError(f"batch_size must be at most the client's rows: {n} > {int(sizes.min())}")
    starts = np.cumsum(sizes) - sizes
    table = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts, sizes)
    left = sizes[:, None] - np.arange(n)  # N − j
    here = starts[:, None] + np.arange(n)
    # every step's two positions up front (they do not depend on the table): the loop only swaps
    there = (here + np.minimum((u * left).astype(np.int64), left - 1)).T.copy()
    here_by_step = here.T.copy()
    for i, t in zip(here_by_step, there):
        table[i], table[t] = table[t], table[i]
    return table[here]


@dataclass(frozen=True)
class RoundDraws:
    """A cohort's draws for one round, stacked in the cohort's order.

    Parameters
    ----------
    probe_rows : ndarray of int64, shape (c, P, n)
        Local row indices of each client's P probe batches (level-major).
    probe_normals : ndarray of shape (c, P, n)
        Standard normals, to be scaled by each level's noise.
    train_rows : list of (ndarray of int64, shape (c, n)) or None
        Per training gradient, each client's batch rows; None = all local rows.
    train_normals : ndarray or None
        Standard normals of the training targets, ragged: client c's m_c per gradient
        follow one another from ``train_starts[c]``. None for clean targets.
    train_starts : ndarray of int64, shape (c,) or None
    """

    probe_rows: np.ndarray
    probe_normals: np.ndarray
    train_rows: list[np.ndarray | None]
    train_normals: np.ndarray | None
    train_starts: np.ndarray | None

    def train_noise(self, step: int, positions: np.ndarray, used: int) -> np.ndarray | None:
        """Standard normals of the training targets of gradient ``step`` for the clients at
        ``positions``, who all use ``used`` rows: (g, used), or None for clean targets."""
        if self.train_normals is None:
            return None
        first = self.train_starts[positions] + step * used
        return self.train_normals[first[:, None] + np.arange(used)]


def round_draws(
    key: np.ndarray, partitions: np.ndarray, sizes: np.ndarray, *, probe_batches: int, batch_size: int,
    train_steps: int, minibatch: bool, noisy_targets: bool,
) -> RoundDraws:
    """Every draw a cohort's clients make in one round (the layout of the module docstring).

    Parameters
    ----------
    key : ndarray of uint64, shape (2,)
        :func:`round_key`.
    partitions : ndarray of int, shape (c,)
    sizes : ndarray of int, shape (c,)
        N of each client.
    probe_batches : int
        P = levels × probes (0: no probes).
    batch_size : int
        n.
    train_steps : int
        S ≥ 1, the gradients each client's training takes.
    minibatch : bool
        Training batches are n-row samples (else all N rows).
    noisy_targets : bool
        The training targets get noise.

    Returns
    -------
    RoundDraws
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    c, n, P, S = len(sizes), batch_size, probe_batches, train_steps
    row_draws = P * n + (S * n if minibatch else 0)
    fixed = stream_words(key, partitions, row_draws + P * n)  # (c, row draws + P·n)
    u = unit_uniforms(fixed[:, :row_draws])
    probe_rows = rows_without_replacement(u[:, : P * n].reshape(c * P, n), np.repeat(sizes, P)).reshape(c, P, n)
    train_rows: list[np.ndarray | None] = [None] * S
    if minibatch:
        picked = rows_without_replacement(u[:, P * n :].reshape(c * S, n), np.repeat(sizes, S)).reshape(c, S, n)
        train_rows = [picked[:, s] for s in range(S)]
    probe_normals = standard_normals(fixed[:, row_draws:]).reshape(c, P, n)
    train_normals = train_starts = None
    if noisy_targets:
        used = np.full(c, n, dtype=np.int64) if minibatch else sizes
        words, train_starts = ragged_stream_words(key, partitions, S * used)
        train_normals = standard_normals(words)
    return RoundDraws(probe_rows, probe_normals, train_rows, train_normals, train_starts)
