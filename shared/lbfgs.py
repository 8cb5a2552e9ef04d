"""Limited-memory BFGS directions from the gradients a server observes.

The fedlbfgs rival: the server sees only the federated gradient ḡ(w) each
round, keeps the last m pairs s = w_k − w_{k−1}, y = ḡ_k − ḡ_{k−1}, and steps
along the two-loop recursion's H·ḡ (Nocedal & Wright, Numerical Optimization,
Algorithm 7.4), with the usual initial scaling H₀ = (sᵀy / yᵀy)·I from the
newest pair. No line search: a line search costs extra rounds of messages, so
the step is w − η·H·ḡ with η tuned like every other method's.

With exact gradients of a quadratic, y = Σs exactly and the pairs carry true
curvature; with sampled clients or noisy targets y is a noisy difference and
the directions degrade — which is what the comparison shows.
"""

from __future__ import annotations

import numpy as np


class LBFGSMemory:
    """The last ``memory`` curvature pairs and the two-loop recursion over them.

    Parameters
    ----------
    memory : int
        m ≥ 1, the pairs kept (O(m·d) floats).
    """

    def __init__(self, memory: int) -> None:
        if memory < 1:
            raise ValueError("memory must be ≥ 1")
        self.memory = memory
        self._pairs: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1/sᵀy)
        self._point: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        """The number of pairs held (≤ memory)."""
        return len(self._pairs)

    def observe(self, w: np.ndarray, g: np.ndarray) -> None:
        """Record the gradient g (d,) at w (d,); the change from the last point becomes
        a pair when it has positive curvature sᵀy > 0 (else it is skipped, as BFGS must)."""
        w, g = np.array(w, dtype=float), np.array(g, dtype=float)
        if self._point is not None:
            s, y = w - self._point[0], g - self._point[1]
            sy = float(s @ y)
            if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
                self._pairs.append((s, y, 1.0 / sy))
                del self._pairs[: -self.memory]
        self._point = (w, g)

    def direction(self, g: np.ndarray) -> np.ndarray | None:
        """H·g (d,), the inverse-Hessian approximation applied to g; None before any pair."""
        if not self._pairs:
            return None
        q = np.array(g, dtype=float)
        alphas = []
        for s, y, rho in reversed(self._pairs):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * y
        s, y, _ = self._pairs[-1]
        q *= float(s @ y) / float(y @ y)
        for (s, y, rho), a in zip(self._pairs, reversed(alphas)):
            q += (a - rho * float(y @ q)) * s
        return q
