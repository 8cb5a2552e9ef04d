"""Exact curvature along past steps of a quadratic, from gradient differences.

With exact gradients of a least-squares loss (every client, full local data,
clean targets) the gradient is affine in w: g(w_b) − g(w_a) = Σ(w_b − w_a).
So every step the server has taken already tells it Σ along that step, for
free. :class:`SecantMemory` keeps the last m steps S (d × m) between the points
where gradients were observed and the gradient changes Y = ΣS — both straight
from observations, so round-off does not compound — and uses them twice a round:

- ``minimise``: move to the minimiser of the loss over w + span(S),
  a = −(SᵀY)⁺Sᵀg, w' = w + Sa, whose gradient g' = g + Ya is known exactly.
  An overshooting step is undone. While P is fixed and every step so far is
  remembered, the minimisers w' are the iterates of preconditioned conjugate
  gradients (the span grows by one Krylov direction a round), so a rough P
  costs about √κ(PΣ) rounds, not κ(PΣ). Once old steps drop out it is a
  limited-memory variant: far better than plain steps, slower than CG
  (``tests/test_secant.py``: d = 50, κ = 10⁴, P = I, a 10⁶-fold drop takes
  about d rounds with memory 50 and about twice that with memory 20).
- ``step_size``: the exact minimiser along the previous direction u,
  η* = g'_prevᵀu / uᵀΣu with Σu = (g'_prev − g)/η_prev, shortens the next step when
  P's scale is too large along some direction (a low-rank P that missed part
  of a spike treats it as bulk).

A pair may also come from elsewhere (``observe_change``): in a round that missed
clients the server estimates Σ·step from the clients heard at both ends of the
step (``shared.gradient_table.GradientTable.change``). Such a column of Y is the
mean Σ_i·s of those clients, not exactly Σs, and "exact" below then means "as
exact as the pairs".

No extra messages: only the aggregated gradients the clients already send.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def gradients_are_exact(gradient: str, noisy_targets: bool, local_steps: int) -> bool:
    """Whether each client's gradient is the exact gradient of its quadratic loss: full
    local data, clean targets, and gradients (not local-step updates) sent. The server's
    ḡ (shared.gradient_table) is then the federation's exact gradient in every round in
    which each client in the table replied at w — the case where gradient differences
    are Σ times the step — and carried forward along Σ̂ in the others."""
    return gradient == "full" and not noisy_targets and local_steps == 0


class SecantMemory:
    """The last ``memory`` steps of an exact-gradient quadratic and Σ along them.

    The server's round: ``observe`` the gradient at the point the clients
    evaluated, ``step_size``, ``minimise``, take the step w' − η·u and record
    it with ``stepped``.

    Parameters
    ----------
    memory : int
        m ≥ 1, the number of past steps kept (O(m·d) floats).
    """

    def __init__(self, memory: int) -> None:
        if memory < 1:
            raise ValueError("memory must be ≥ 1")
        self.memory = memory
        self._steps: list[np.ndarray] = []  # unit steps s/‖s‖ (d,)
        self._changes: list[np.ndarray] = []  # Σs/‖s‖ (d,)
        self._point: tuple[np.ndarray, np.ndarray | None] | None = None  # last (w, g) observed; g None: unknown
        self._last: tuple[np.ndarray, np.ndarray, float] | None = None  # (g', u, η) of the last step

    def __len__(self) -> int:
        """The number of steps remembered (≤ memory)."""
        return len(self._steps)

    def observe(self, w: np.ndarray, g: np.ndarray) -> None:
        """Record the exact gradient g (d,) at w (d,); the step from the last point joins S
        when the last point's gradient is known exactly too (not after ``observe_change``
        or ``forget_gradient``)."""
        w, g = np.array(w, dtype=float), np.array(g, dtype=float)
        if self._point is not None and self._point[1] is not None:
            self._remember(w - self._point[0], g - self._point[1])
        self._point = (w, g)

    def observe_change(self, w: np.ndarray, change: np.ndarray | None) -> None:
        """Move to w (d,), given Σ·(w − last point) = ``change`` (d,) from elsewhere (the
        clients heard at both points, ``GradientTable.change``): the step joins S, and
        the gradient at w counts as unknown until ``observe``. ``change`` None (or no
        last point): only move."""
        w = np.array(w, dtype=float)
        if self._point is not None and change is not None:
            self._remember(w - self._point[0], np.asarray(change, dtype=float))
        self._point = (w, None)

    def forget_gradient(self) -> None:
        """The last point's gradient belongs to another quadratic (the clients behind ĝ
        changed): the steps remembered stay, the next pair must come from
        ``observe_change``."""
        if self._point is not None:
            self._point = (self._point[0], None)

    def knows_gradient(self) -> bool:
        """Whether the last point's exact gradient is known (no point yet counts as known)."""
        return self._point is None or self._point[1] is not None

    @property
    def last_point(self) -> np.ndarray | None:
        """The last w observed (d,), or None."""
        return None if self._point is None else self._point[0]

    def _remember(self, step: np.ndarray, change: np.ndarray) -> None:
        """Add the pair (step, Σ·step) as unit step and scaled change; drop the oldest."""
        norm = float(np.linalg.norm(step))
        if norm > 0:
            self._steps.append(step / norm)
            self._changes.append(change / norm)
            del self._steps[: -self.memory], self._changes[: -self.memory]

    def corrected(self, curvature: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """v ↦ C·v, with C = Σ along span(S) and ``curvature`` (v ↦ Σ̂·v) elsewhere.

        C·v = Σ̂·v + (Y − Σ̂S)·S⁺v: for a v in span(S) it is Y's Σ·v (exact from ĝ
        differences, the both-ends clients' mean from ``observe_change``), for v ⊥ S
        it is Σ̂·v. Carrying an absent client's gradient forward over the steps the
        server took since it was heard (a sum of remembered steps) then errs only by
        that client's own curvature Σ_i against the federation's Σ, not by Σ̂'s error.
        ``curvature`` itself when S is empty.
        """
        if not self._steps:
            return curvature
        S, Y = np.stack(self._steps, axis=1), np.stack(self._changes, axis=1)
        fix = Y - curvature(S)
        coefficients = np.linalg.pinv(S, rcond=1e-8)  # S⁺ (m, d): steps nearly parallel carry nothing new
        return lambda v: curvature(v) + fix @ (coefficients @ v)

    def minimise(self, w: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(w', g'): the minimiser over w + span(S) and its gradient, both (d,) (exact
        with exact pairs and an exact g)."""
        if not self._steps:
            return w, g
        S, Y = np.stack(self._steps, axis=1), np.stack(self._changes, axis=1)
        curvature = S.T @ Y
        vals, vecs = np.linalg.eigh((curvature + curvature.T) / 2)
        # steps nearly parallel to others, or changes at round-off level, carry no curvature
        keep = vals > max(vals.max(), 0.0) * 1e-10
        if not keep.any():
            return w, g
        a = -(vecs[:, keep] / vals[keep]) @ (vecs[:, keep].T @ (S.T @ g))
        return w + S @ a, g + Y @ a

    def step_size(self, g: np.ndarray, default: float) -> float:
        """η for the next step: the exact minimiser along the last direction (given the
        gradient g now observed at the point that step reached), capped at ``default``;
        ``default`` before any step, or when the curvature seen is not positive.

        The cap: a longer step than the caller's η can overshoot when P has just
        changed scale (the warm-up's I/λ̂_max, then (Σ̂+λI)⁻¹); a shorter one is safe,
        and ``minimise`` stretches it next round if it fell short.
        """
        if self._last is None:
            return default
        g_prev, u, eta = self._last
        curvature = float(u @ (g_prev - np.asarray(g, dtype=float))) / eta
        if curvature <= 0:
            return default
        return min(default, float(g_prev @ u) / curvature)

    def interrupted(self) -> None:
        """A step the memory did not see (taken on an inexact gradient): the next
        ``step_size`` falls back to its default. The steps remembered stay valid."""
        self._last = None

    def stepped(self, g: np.ndarray, u: np.ndarray, eta: float) -> None:
        """Record the step w' − η·u just taken from a point whose gradient is g."""
        self._last = (np.array(g, dtype=float), np.array(u, dtype=float), float(eta))
