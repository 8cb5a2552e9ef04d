"""The client's model and gradients, in torch, batched over many mini-batches at once.

A model here is anything with ``gradients(w, X, y)``: the gradients of
L_B(w) = ‖X_B w − y_B‖²/(2n) for a stack of b batches in one call.
:class:`LinearModel` computes them in closed form (two batched matrix products);
:class:`ModuleModel` takes any ``torch.nn.Module`` and differentiates it with
torch.func (vmap of grad), so a nonlinear model slots in without changing the
protocol. One call may hold one client's probe batches or a whole cohort's:
the per-batch arithmetic is the same either way (see :func:`batched_matvec`),
which is what keeps the per-message and cohort paths bit-identical.

The random draws (which rows, which noise) are separate from the arithmetic
(:mod:`client.draws`): a cohort draws every client's batches at once from
per-client streams, then computes everything stacked.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from shared.calibration import injected_variances

# torch warns when it wraps a read-only array (the federation's rows are frozen); it only reads them
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

# One thread: BLAS reductions then sum in the same order in every engine's
# worker process, which keeps runs bit-identical across engines.
torch.set_num_threads(1)


def batched_matvec(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A[i] @ v[i] for a stack: A (b, m, k), v (b, k) → (b, m).

    One small GEMM per batch element, whose rounding depends only on (m, k):
    the result for element i is the same whatever b is. torch routes a stack
    of one to a different BLAS kernel, so b = 1 is computed as a stack of two.
    """
    if A.shape[0] == 1:
        return batched_matvec(A.expand(2, -1, -1), v.expand(2, -1))[:1]
    return torch.bmm(A, v.unsqueeze(-1)).squeeze(-1)


class LinearModel:
    """y = xᵀw without intercept (data are centred), in float64: gradients in closed form.

    Parameters
    ----------
    dim : int
        d, the number of features and parameters.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def gradients(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∇L_B at w for b batches: X (b, n, d), y (b, n), w (d,) or one per batch (b, d).

        Returns (b, d): X_Bᵀ(X_B w − y_B)/n per batch.
        """
        Xt, wt, yt = (read_only_tensor(a) for a in (X, w, y))
        if wt.ndim == 1:
            wt = wt.expand(Xt.shape[0], -1)
        residual = batched_matvec(Xt, wt) - yt
        return (batched_matvec(Xt.transpose(1, 2), residual) / Xt.shape[1]).numpy()

    def normal_equations(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """XᵀX and Xᵀy of b row sets: X (b, N, d), y (b, N) → (b, d, d), (b, d).

        One GEMM per set over [X, y], copied into rows padded to a multiple of 64 bytes
        in torch's 64-byte-aligned memory: every set then sits at the same alignment,
        which MKL's kernels depend on, so set i gets the same bits whatever the stack.
        """
        b, rows, d = X.shape
        width = -(-(d + 1) // 8) * 8
        padded = torch.zeros((max(b, 2), rows, width), dtype=torch.float64)  # a stack of one runs as two
        padded[:b, :, :d] = read_only_tensor(X)
        padded[:b, :, d] = read_only_tensor(y)
        if b == 1:
            padded[1] = padded[0]
        products = torch.bmm(padded.transpose(1, 2), padded)[:b].numpy()
        return products[:, :d, :d].copy(), products[:, :d, d].copy()

    def full_gradients(self, w: np.ndarray, gram: np.ndarray, xty: np.ndarray, rows: int) -> np.ndarray:
        """∇L at w over all N rows of b sets from their normal equations: (XᵀX·w − Xᵀy)/N,
        O(d²) instead of O(N·d). w (d,) or (b, d); gram (b, d, d); xty (b, d) → (b, d)."""
        Gt, wt, bt = (read_only_tensor(a) for a in (gram, w, xty))
        if wt.ndim == 1:
            wt = wt.expand(Gt.shape[0], -1)
        return ((batched_matvec(Gt, wt) - bt) / rows).numpy()


def read_only_tensor(a: np.ndarray) -> torch.Tensor:
    """A float64 tensor sharing ``a``'s memory. Shards are read-only views (one copy of the
    data for every client); torch warns about those on every run, but nothing here writes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(a, dtype=torch.float64)


class ModuleModel:
    """Any torch module mapping (n, d) inputs to (n, 1) predictions: gradients by autograd.

    The module's parameters, flattened in order, are the vector w exchanged
    with the server. One call differentiates all b batches together
    (torch.func vmap over batches of grad of the batch loss).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._names = [name for name, _ in module.named_parameters()]
        self._shapes = [p.shape for _, p in module.named_parameters()]
        self._batched = vmap(grad(self._batch_loss), in_dims=(0, 0, 0))

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(self._names, self._shapes):
            size = int(np.prod(shape))
            out[name] = flat[:, start : start + size].reshape(-1, *shape)
            start += size
        return out

    def _batch_loss(self, params, X, y):
        pred = functional_call(self.module, params, (X,)).squeeze(-1)
        return 0.5 * torch.mean((pred - y) ** 2)

    def gradients(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Same contract as :meth:`LinearModel.gradients`."""
        flat = torch.as_tensor(w, dtype=torch.float64)
        if flat.ndim == 1:
            flat = flat.expand(len(X), -1)
        g = self._batched(self._params(flat), torch.as_tensor(X), torch.as_tensor(y))
        return torch.cat([g[n].reshape(len(X), -1) for n in self._names], dim=-1).numpy()


def linear_model(dim: int) -> LinearModel:
    """The model fedsigma's clients train: linear regression in closed form."""
    return LinearModel(dim)


def probe_noise_std(multipliers: list[float], batch_size: int, local_rows: np.ndarray, natural_var: float) -> np.ndarray:
    """Standard deviation of each level's probe-target noise for clients with these N:
    shape (c, levels) (see :mod:`shared.calibration`)."""
    sizes, where = np.unique(np.asarray(local_rows, dtype=np.int64), return_inverse=True)
    per_size = [np.sqrt(injected_variances(multipliers, batch_size, int(N), natural_var)) for N in sizes]
    return np.array(per_size).reshape(len(sizes), len(multipliers))[where.reshape(-1)]


def probe_targets(y: np.ndarray, rows: np.ndarray, noise: np.ndarray, label_clip: float) -> np.ndarray:
    """Noisy targets of probe batches: y[rows] (clipped to [−B, B] when B > 0) + noise."""
    targets = np.clip(y[rows], -label_clip, label_clip) if label_clip > 0 else y[rows]
    return targets + noise


def local_step(local: np.ndarray, g: np.ndarray, local_lr: float, precond: np.ndarray | None) -> np.ndarray:
    """w ← w − η_local·P·g for a stack of clients: local, g (c, d); P (d, d) or None (= I)."""
    if precond is None:
        return local - local_lr * g
    P = torch.as_tensor(precond, dtype=torch.float64).expand(len(g), -1, -1)
    return local - local_lr * batched_matvec(P, torch.as_tensor(g)).numpy()
