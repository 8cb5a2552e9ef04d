"""Client gradients: the closed-form linear model against autograd, and batch invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.cohort import CohortData, cohort_round
from client.task import LinearModel, ModuleModel
from shared import protocol as p


def _autograd_model(dim: int) -> ModuleModel:
    """The previous implementation: torch.func vmap/grad over an nn.Linear."""
    return ModuleModel(torch.nn.Linear(dim, 1, bias=False, dtype=torch.float64))


def _one_client(model, X, y, w, config: p.RoundConfig, precond=None):
    """One client's reply (probes, update, rows used), as the ClientApp computes it."""
    one = CohortData(X, y, np.array([0]), np.array([len(X)]), np.array([0]))
    got = cohort_round(model, one, w, config.to_config(), seed=1, precond=precond)
    return got.probes[0], got.updates[0], int(got.num_examples[0])


@pytest.mark.parametrize("dim, rows, batch", [(20, 400, 32), (50, 1000, 64), (10, 442, 16), (3, 40, 7)])
def test_closed_form_probes_match_autograd(dim, rows, batch):
    rng = np.random.default_rng(dim)
    X, y, w = rng.standard_normal((rows, dim)), rng.standard_normal(rows), rng.standard_normal(dim)
    cfg = p.RoundConfig(server_round=1, batch_size=batch, probes=5, noise_levels=(0.3, 1.0), natural_var=0.2,
                        label_clip=1.5)
    new = _one_client(LinearModel(dim), X, y, w, cfg)[0]
    old = _one_client(_autograd_model(dim), X, y, w, cfg)[0]
    assert new.shape == (2, 5, dim)
    assert np.max(np.abs(new - old)) <= 1e-12 * np.max(np.abs(old))


@pytest.mark.parametrize("kind, steps", [("full", 0), ("minibatch", 0), ("full", 3), ("minibatch", 2)])
def test_closed_form_training_matches_autograd(kind, steps):
    rng = np.random.default_rng(5)
    X, y, w = rng.standard_normal((300, 8)), rng.standard_normal(300), rng.standard_normal(8)
    P = np.linalg.inv(X.T @ X / 300 + 0.1 * np.eye(8))
    cfg = p.RoundConfig(server_round=2, batch_size=32, train_gradient=kind, noisy_targets=True, local_steps=steps,
                        local_learning_rate=0.3)
    _, new, used = _one_client(LinearModel(8), X, y, w, cfg, P)
    _, old, used_old = _one_client(_autograd_model(8), X, y, w, cfg, P)
    assert used == used_old == (300 if kind == "full" else 32)
    assert np.max(np.abs(new - old)) <= 1e-12 * np.max(np.abs(old))


@pytest.mark.parametrize("b, n, d", [(37, 32, 20), (5, 7, 3), (3, 400, 20), (9, 40, 20), (4, 1, 5), (6, 33, 17)])
def test_a_stack_gives_each_batch_the_same_bits_as_alone(b, n, d):
    """What the cohort path relies on: batch i of a stack of b equals batch i computed alone,
    also when the stack is gathered from a larger array (items at any memory offset)."""
    rng = np.random.default_rng(0)
    model = LinearModel(d)
    pool = rng.standard_normal((b * n + 3, d))
    X, y = pool[rng.permutation(b * n) + 3].reshape(b, n, d), rng.standard_normal((b, n))
    for w in (rng.standard_normal(d), rng.standard_normal((b, d))):
        stacked = model.gradients(w, X, y)
        alone = np.concatenate([model.gradients(w if w.ndim == 1 else w[i : i + 1], X[i : i + 1].copy(), y[i : i + 1])
                                for i in range(b)])
        assert np.array_equal(stacked, alone)
        halves = np.concatenate([model.gradients(w if w.ndim == 1 else w[part], X[part], y[part])
                                 for part in (slice(0, b // 2 + 1), slice(b // 2 + 1, b))])
        assert np.array_equal(stacked, halves)


@pytest.mark.parametrize("b, n, d", [(37, 40, 20), (5, 7, 3), (3, 400, 20), (6, 33, 17), (2, 513, 7), (4, 100, 100)])
def test_normal_equations_give_each_set_the_same_bits_as_alone_and_the_gradient(b, n, d):
    """The cohort's kept XᵀX, Xᵀy equal a lone client's, bit for bit, at any memory offset;
    (XᵀX·w − Xᵀy)/N is the full-data gradient to rounding."""
    rng = np.random.default_rng(1)
    model = LinearModel(d)
    pool = rng.standard_normal((b * n + 1, d))
    X, y = pool[1:].reshape(b, n, d), rng.standard_normal((b, n))  # sets at odd offsets
    gram, xty = model.normal_equations(X, y)
    for i in range(b):
        alone = model.normal_equations(X[i : i + 1].copy(), y[i : i + 1].copy())
        assert np.array_equal(alone[0][0], gram[i]) and np.array_equal(alone[1][0], xty[i])
    np.testing.assert_allclose(gram, np.einsum("bni,bnj->bij", X, X), rtol=1e-12, atol=1e-12 * n)
    w = rng.standard_normal(d)
    direct = model.gradients(w, X, y)
    assert np.max(np.abs(model.full_gradients(w, gram, xty, n) - direct)) <= 1e-12 * np.max(np.abs(direct)) * d
