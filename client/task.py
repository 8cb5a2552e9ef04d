"""The client's model and gradients: a torch linear model, gradients by autograd.

Gradients of many mini-batches are computed in one call with torch.func
(vmap over batches of grad of the batch loss), so a nonlinear model only needs
a different ``torch.nn.Module`` — the protocol does not change.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from shared.calibration import injected_variances

# One thread: BLAS reductions then sum in the same order in every engine's
# worker process, which keeps runs bit-identical across engines.
torch.set_num_threads(1)


def linear_model(dim: int) -> torch.nn.Module:
    """y = xᵀw without intercept (data are centred), in float64."""
    return torch.nn.Linear(dim, 1, bias=False, dtype=torch.float64)


class GradientOracle:
    """Mini-batch gradients of L_B(w) = ‖X_B w − y_B‖²/(2n) for a torch module.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (n, d) inputs to (n, 1) predictions; its parameters, flattened in
        order, are the parameter vector w exchanged with the server.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._names = [name for name, _ in model.named_parameters()]
        self._shapes = [p.shape for _, p in model.named_parameters()]
        self._grad = grad(self._batch_loss)
        self._batched = vmap(self._grad, in_dims=(None, 0, 0))

    def _params(self, w: np.ndarray) -> dict[str, torch.Tensor]:
        flat = torch.as_tensor(w, dtype=torch.float64)
        out, start = {}, 0
        for name, shape in zip(self._names, self._shapes):
            size = int(np.prod(shape))
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out

    def _batch_loss(self, params, X, y):
        pred = functional_call(self.model, params, (X,)).squeeze(-1)
        return 0.5 * torch.mean((pred - y) ** 2)

    def gradient(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∇L_B(w) of shape (d,) for one batch X (n, d), y (n,)."""
        g = self._grad(self._params(w), torch.as_tensor(X), torch.as_tensor(y))
        return _flatten(g, self._names)

    def gradients(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradients of shape (b, d) for b batches X (b, n, d), y (b, n)."""
        g = self._batched(self._params(w), torch.as_tensor(X), torch.as_tensor(y))
        return _flatten(g, self._names, batched=True)


def _flatten(grads: dict[str, torch.Tensor], names: list[str], batched: bool = False) -> np.ndarray:
    parts = [grads[n].reshape(grads[n].shape[0], -1) if batched else grads[n].reshape(-1) for n in names]
    return torch.cat(parts, dim=-1).numpy()


def probe_gradients(
    oracle: GradientOracle,
    w: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    probes: int,
    multipliers: list[float],
    natural_var: float,
    rng: np.random.Generator,
    label_clip: float = 0.0,
) -> np.ndarray:
    """Calibrated probe gradients of shape (levels, probes, d).

    Each probe is an n-row batch drawn without replacement from the N local
    rows, with fresh Gaussian noise of the level's injected variance added to
    its targets (see :mod:`shared.calibration`). ``label_clip`` = B > 0 clips
    the targets to [−B, B] first, which bounds what one label can change.
    """
    rows = len(X)
    inj = injected_variances(multipliers, batch_size, rows, natural_var)
    levels = len(inj)
    idx = np.stack([rng.choice(rows, batch_size, replace=False) for _ in range(levels * probes)])
    noise = rng.standard_normal(idx.shape) * np.sqrt(np.repeat(inj, probes))[:, None]
    targets = np.clip(y[idx], -label_clip, label_clip) if label_clip > 0 else y[idx]
    grads = oracle.gradients(w, X[idx], targets + noise)
    return grads.reshape(levels, probes, -1)


def training_direction(
    oracle: GradientOracle,
    w: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    *,
    kind: str,
    batch_size: int,
    noise_std: float,
    local_steps: int,
    local_lr: float,
    precond: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """The training contribution and the rows it used.

    local_steps = 0: the gradient at w of the full local data (kind = "full")
    or of one n-row batch (kind = "minibatch"). local_steps > 0: that many
    steps w ← w − η_local·P·g from w, returning the update w_local − w.
    noise_std > 0 adds calibrated noise to the targets used.
    """

    def one_gradient(at: np.ndarray) -> tuple[np.ndarray, int]:
        idx = np.arange(len(X)) if kind == "full" else rng.choice(len(X), batch_size, replace=False)
        targets = y[idx] + noise_std * rng.standard_normal(len(idx)) if noise_std > 0 else y[idx]
        return oracle.gradient(at, X[idx], targets), len(idx)

    if local_steps == 0:
        return one_gradient(w)
    P = np.eye(len(w)) if precond is None else precond
    local, used = w.copy(), 0
    for _ in range(local_steps):
        g, rows = one_gradient(local)
        local = local - local_lr * (P @ g)
        used = max(used, rows)
    return local - w, used
