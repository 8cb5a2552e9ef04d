"""The rivals' own maths: FedNL's compressors and Hessian learning, L-BFGS's two-loop recursion."""

import numpy as np
import pytest

from client.fednl import fednl_reply
from shared import fednl
from shared import protocol as p
from shared.lbfgs import LBFGSMemory


def _spd(d: int, kappa: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / kappa, d)) @ q.T


def test_rank_r_keeps_the_largest_eigenpairs_and_full_rank_is_exact():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8))
    m = a + a.T
    vals, vecs = fednl.compress_rank(m, 2)
    full = np.linalg.eigvalsh(m)
    assert sorted(np.abs(vals)) == pytest.approx(sorted(np.abs(full))[-2:])
    assert fednl.expand_rank(*fednl.compress_rank(m, 8)) == pytest.approx(m, abs=1e-12)
    # contractive: ‖M − C(M)‖_F ≤ ‖M‖_F
    assert np.linalg.norm(m - fednl.expand_rank(vals, vecs)) < np.linalg.norm(m)


def test_top_k_is_symmetric_and_keeps_the_largest_entries():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 6))
    m = a + a.T
    index, values = fednl.compress_topk(m, 3)
    out = fednl.expand_topk(index, values, 6)
    assert np.array_equal(out, out.T)
    upper = np.abs(m[np.triu_indices(6)])
    assert sorted(np.abs(values)) == pytest.approx(sorted(upper)[-3:])
    assert fednl.expand_topk(*fednl.compress_topk(m, 21), 6) == pytest.approx(m)


def test_unknown_compressor_is_refused():
    with pytest.raises(ValueError, match="compressor"):
        fednl.compress(np.eye(3), "svd", 1)


def test_hessian_learning_converges_to_the_local_hessian():
    """Rank-1 corrections with α = 1 learn a rank-d Hessian in d steps (each removes one eigenpair)."""
    h = _spd(6, 100.0, 2)
    estimate = np.zeros((6, 6))
    distances = []
    for _ in range(6):
        _, estimate, dist = fednl.client_update(h, estimate, "rank", 1)
        distances.append(dist)
    assert np.all(np.diff(distances) < 0)
    assert distances[-1] < 1e-10


def test_fednl_with_full_rank_lands_on_the_optimum_in_one_step():
    """With R = d every client's H_i is exact after its first round and l_i = 0, so the
    server's (H + l·I)⁻¹·Σ p_i g_i is the least-squares solution: the method's fixed point."""
    rng = np.random.default_rng(3)
    d, clients = 5, 4
    parts = [(rng.standard_normal((30 + 10 * i, d)), rng.standard_normal(30 + 10 * i)) for i in range(clients)]
    w = rng.standard_normal(d)
    rows = np.array([len(X) for X, _ in parts], dtype=float)
    hsum, shifted, shifts = np.zeros((d, d)), [], []
    for X, y in parts:
        arrays, new = fednl_reply(X, y, w, None, "rank", d, 1.0)
        message = {k[len(p.FEDNL_PREFIX):]: v for k, v in arrays.items() if k.startswith(p.FEDNL_PREFIX)}
        hsum += len(X) * fednl.expand(message, "rank", d)
        shifted.append(arrays[p.FEDNL_SHIFTED])
        shifts.append(arrays[p.FEDNL_DISTANCE][0])
        assert new == pytest.approx(X.T @ X / len(X))
    weights = rows / rows.sum()
    step = fednl.newton_step(hsum / rows.sum(), float(weights @ shifts), weights @ np.stack(shifted))
    X_all = np.vstack([X for X, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    assert step == pytest.approx(np.linalg.lstsq(X_all, y_all, rcond=None)[0], rel=1e-8)


def test_lbfgs_two_loop_is_the_inverse_hessian_on_the_pairs_span():
    """The secant equation: H·y = s for the newest pair, whatever the memory."""
    sigma = _spd(10, 1e3, 4)
    mem = LBFGSMemory(3)
    rng = np.random.default_rng(5)
    w = rng.standard_normal(10)
    assert mem.direction(sigma @ w) is None
    for _ in range(5):
        mem.observe(w, sigma @ w)
        w = w + rng.standard_normal(10)
    mem.observe(w, sigma @ w)
    assert len(mem) == 3
    s, y, _ = mem._pairs[-1]
    assert mem.direction(y) == pytest.approx(s, rel=1e-8)


def test_lbfgs_skips_pairs_without_positive_curvature():
    mem = LBFGSMemory(5)
    mem.observe(np.zeros(2), np.zeros(2))
    mem.observe(np.array([1.0, 0.0]), np.array([-1.0, 0.0]))  # sᵀy < 0: not a BFGS pair
    assert len(mem) == 0


def test_lbfgs_with_unit_steps_solves_a_quadratic_in_about_d_iterations():
    d = 20
    sigma = _spd(d, 1e3, 6)
    b = np.random.default_rng(7).standard_normal(d)
    w = np.zeros(d)
    mem = LBFGSMemory(d)
    g = sigma @ w - b
    mem.observe(w, g)
    w = w - g / np.linalg.eigvalsh(sigma)[-1]  # the first step: plain GD at 1/λmax
    for _ in range(8 * d):  # no line search: slower than CG, still linear
        g = sigma @ w - b
        mem.observe(w, g)
        w = w - mem.direction(g)
    opt = np.linalg.solve(sigma, b)
    assert np.linalg.norm(w - opt) < 1e-6 * np.linalg.norm(opt)
