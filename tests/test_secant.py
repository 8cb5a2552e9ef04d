"""SecantMemory: exact curvature along past steps of a quadratic, from gradient changes."""

import json

import numpy as np
import pytest

from shared.secant import SecantMemory


def _quadratic(d: int, kappa: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    H = Q @ np.diag(np.geomspace(1.0, kappa, d)) @ Q.T
    w_star = rng.standard_normal(d)
    return H, w_star, (lambda w: H @ (w - w_star))


def _run(P: np.ndarray, memory: int | None, rounds: int, d: int = 12, kappa: float = 1e3) -> list[float]:
    """Energy (w − w*)ᵀH(w − w*) after each round of the server's loop: observe,
    size the step, correct over the past steps, step along P·g'. memory=None: no
    secant memory, plain steps of η = 1/λ_max (what FedSGD does)."""
    H, w_star, grad = _quadratic(d, kappa)
    mem = SecantMemory(memory) if memory else None
    w, energies = np.zeros(d), []
    for _ in range(rounds):
        g = grad(w)
        if mem is None:
            w = w - (1.0 / np.linalg.eigvalsh(H).max()) * (P @ g)
        else:
            mem.observe(w, g)
            eta = mem.step_size(g, 1.0 / np.linalg.eigvalsh(H).max())
            w, g = mem.minimise(w, g)
            u = P @ g
            mem.stepped(g, u, eta)
            w = w - eta * u
        e = w - w_star
        energies.append(float(e @ H @ e))
    return energies


def test_full_memory_with_a_fixed_p_terminates_like_conjugate_gradients():
    """P = I, d = 12, κ = 10³: CG solves a d-dimensional quadratic in d steps; the
    loop runs one round behind CG and loses a couple of rounds to round-off at
    κ = 10³, so d + 4 rounds. Plain GD is nowhere near."""
    d = 12
    start = _run(np.eye(d), memory=d, rounds=1)[0]
    secant = _run(np.eye(d), memory=d, rounds=d + 4)
    plain = _run(np.eye(d), memory=None, rounds=d + 4)
    assert secant[-1] / start < 1e-12
    assert plain[-1] / start > 1e-2


def test_a_short_memory_beats_plain_steps_and_more_memory_beats_less():
    d = 12
    plain = _run(np.eye(d), memory=None, rounds=60, d=d)
    one = _run(np.eye(d), memory=1, rounds=60, d=d)
    five = _run(np.eye(d), memory=5, rounds=60, d=d)
    assert one[-1] < 0.1 * plain[-1]
    assert five[-1] < 0.01 * one[-1]


def _steps(mem: SecantMemory, grad, w: np.ndarray, directions: list[np.ndarray], eta: float) -> np.ndarray:
    """Take the given steps w ← w − η·u (no correction), recording each; returns the last w."""
    for u in directions:
        mem.observe(w, grad(w))
        mem.stepped(grad(w), u, eta)
        w = w - eta * u
    mem.observe(w, grad(w))
    return w


def test_a_memory_shorter_than_the_run_is_limited_memory_cg():
    """d = 50, κ = 10⁴, P = I: with every step remembered (50) the energy falls 10⁶-fold
    in about d rounds; with 20 it takes about twice as long; 5 and plain steps do not
    get there in 300 rounds, though 5 is far ahead of plain."""
    d, kappa = 50, 1e4

    def rounds_to(memory):
        energy = _run(np.eye(d), memory=memory, rounds=300, d=d, kappa=kappa)
        return next((k + 1 for k, e in enumerate(energy) if e < 1e-6 * energy[0]), None), energy[-1]

    full, _ = rounds_to(50)
    twenty, _ = rounds_to(20)
    five, five_end = rounds_to(5)
    plain, plain_end = rounds_to(None)
    assert full is not None and full <= 60
    assert twenty is not None and full < twenty <= 150
    assert five is None and plain is None and five_end < 1e-2 * plain_end


def test_minimise_lands_on_the_exact_minimiser_over_the_span_and_knows_its_gradient():
    d = 10
    H, w_star, grad = _quadratic(d, 100.0, seed=3)
    rng = np.random.default_rng(4)
    mem = SecantMemory(5)
    directions = [rng.standard_normal(d) for _ in range(3)]
    w = _steps(mem, grad, rng.standard_normal(d), directions, 0.3)
    w2, g2 = mem.minimise(w, grad(w))
    np.testing.assert_allclose(g2, grad(w2), atol=1e-10)  # the gradient there, exactly
    U = np.stack(directions, axis=1)
    np.testing.assert_allclose(U.T @ g2, 0.0, atol=1e-9)  # stationary over the span
    a = np.linalg.solve(U.T @ H @ U, -U.T @ grad(w))  # the minimiser over w + span(U), by hand
    np.testing.assert_allclose(w2, w + U @ a, atol=1e-9)


def test_step_size_is_the_exact_minimiser_along_the_last_direction():
    d = 6
    H, w_star, grad = _quadratic(d, 50.0, seed=5)
    mem = SecantMemory(3)
    w = np.ones(d)
    assert mem.step_size(grad(w), default=0.7) == 0.7  # no step yet
    u = np.arange(1.0, d + 1)
    _steps(mem, grad, w, [u], 2.0)
    best = (grad(w) @ u) / (u @ H @ u)
    assert best < 0.7
    g = grad(w - 2.0 * u)
    assert mem.step_size(g, default=0.7) == pytest.approx(best, rel=1e-10)
    assert mem.step_size(g, default=best / 2) == best / 2  # never longer than the caller's η


def test_an_overshooting_step_is_undone_at_the_next_round():
    """A step 100× too long along the gradient: the next round's correction puts w
    back on the exact minimiser along it."""
    d = 4
    H, w_star, grad = _quadratic(d, 10.0, seed=6)
    mem = SecantMemory(2)
    w0 = np.zeros(d)
    g0 = grad(w0)
    w1 = _steps(mem, grad, w0, [g0], 100.0)
    w2, _ = mem.minimise(w1, grad(w1))
    np.testing.assert_allclose(w2, w0 - (g0 @ g0) / (g0 @ H @ g0) * g0, atol=1e-9)


def test_memory_is_bounded_and_must_be_positive():
    H, w_star, grad = _quadratic(5, 10.0, seed=7)
    mem = SecantMemory(3)
    _steps(mem, grad, np.zeros(5), list(np.eye(5)) * 2, 0.1)
    assert len(mem) == 3
    with pytest.raises(ValueError):
        SecantMemory(0)


def test_auto_step_is_one_only_when_the_secant_memory_can_undo_an_overshoot():
    from scenarios.loader import load_scenario
    from server.build import oracle_for
    from server.methods import resolve_learning_rates

    with_memory = load_scenario("quickstart")
    without = load_scenario("quickstart", ["training.line_search_memory=0"])
    assert resolve_learning_rates(with_memory, oracle_for(with_memory)[1])[0] == 1.0
    assert resolve_learning_rates(without, oracle_for(without)[1])[0] == 0.5


def test_the_memory_pays_off_with_a_rough_low_rank_p(tmp_path):
    """bytes_family at d = 200 (rank-20 P from 800 probes): 20 remembered steps reach
    the target in fewer rounds than a line search along the last step alone."""
    from fedsigma.cli import main

    rounds = {}
    for memory in (1, 20):
        out = tmp_path / str(memory)
        assert main(["run", "bytes_family", "--set", "data.dim=200", "--set", f"training.line_search_memory={memory}",
                     "--out", str(out)]) == 0
        rounds[memory] = json.loads((out / "summary.json").read_text())["rounds_to_target"]
    assert rounds[1] is not None and rounds[20] is not None
    assert rounds[20] < rounds[1], rounds



def test_a_change_from_elsewhere_joins_the_memory_and_the_next_gradient_difference_waits():
    """observe_change adds (step, Σ·step) without a gradient; the next observe only sets the
    point (no pair from an unknown gradient); forget_gradient does the same after a change
    of clients."""
    d = 4
    sigma = np.diag([1.0, 2.0, 3.0, 4.0])
    mem = SecantMemory(5)
    mem.observe_change(np.zeros(d), None)  # a first point, gradient unknown
    assert len(mem) == 0 and not mem.knows_gradient()
    w1 = np.array([1.0, 0, 0, 0])
    mem.observe_change(w1, sigma @ w1)
    assert len(mem) == 1
    mem.observe(w1 + 1, sigma @ (w1 + 1))  # last point's gradient unknown: no pair
    assert len(mem) == 1 and mem.knows_gradient()
    mem.forget_gradient()
    mem.observe(w1 + 2, np.zeros(d))
    assert len(mem) == 1


def test_corrected_curvature_is_exact_along_the_steps_and_the_estimate_elsewhere():
    rng = np.random.default_rng(3)
    d = 6
    a = rng.standard_normal((d, d))
    sigma = a @ a.T + d * np.eye(d)
    rough = np.diag(np.diag(sigma))  # Σ̂: right diagonal, no correlations
    mem = SecantMemory(3)
    points = [rng.standard_normal(d) for _ in range(3)]
    mem.observe(points[0], sigma @ points[0])
    for w in points[1:]:
        mem.observe(w, sigma @ w)
    corrected = mem.corrected(lambda v: rough @ v)
    inside = 0.3 * (points[1] - points[0]) - 2.0 * (points[2] - points[1])
    assert corrected(inside) == pytest.approx(sigma @ inside, rel=1e-9)
    q, _ = np.linalg.qr(np.stack([points[1] - points[0], points[2] - points[1]], axis=1), mode="complete")
    outside = q[:, 2]
    assert corrected(outside) == pytest.approx(rough @ outside, abs=1e-9)
    assert SecantMemory(2).corrected(np.negative)(np.ones(2)) == pytest.approx(-np.ones(2))
