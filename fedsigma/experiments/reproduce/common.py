"""What every reproduce experiment shares: results records, seeded populations,
vectorised gradient draws, Σ̂ from them, and figure helpers.

Gradients are drawn the way a client draws probes (client/task.py), but K at a
time with numpy and from the population (fresh rows every batch): X of shape
(K, n, d), targets y = Xw* + e with total noise variance σ², and
g = Xᵀ(Xw − y)/n for each of the K batches at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from shared.calibration import estimator_coefficients
from shared.data import excess_kurtosis, random_rotation, sample_unit_inputs, spectrum
from shared.estimators import centred_scatter, symmetric_sqrt

SEED = 20260118  # every experiment's RNG derives from this and its own number
CHUNK_FLOATS = 2_000_000  # floats per vectorised block of batches (≈ 16 MB)

OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


@dataclass
class Check:
    """One criterion on one measured number. ``claim`` is the paper claim it
    tests (1–6, docs/method.md), or None for a check of this project's own maths."""

    name: str
    claim: int | None
    measured: float
    op: str
    threshold: float
    unit: str = ""
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.measured = float(self.measured)
        self.threshold = float(self.threshold)
        self.passed = bool(OPS[self.op](self.measured, self.threshold))

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        """``name: measured (criterion op threshold) → PASS``."""
        return f"{self.name}: {fmt(self.measured)}{self.unit} (criterion {self.op} {fmt(self.threshold)}{self.unit})"


@dataclass
class Experiment:
    """What one experiment reports: the setting, a figure, a table, the checks."""

    number: int
    title: str
    setting: str
    figure: str
    table: list[list[str]]
    checks: list[Check]
    notes: str = ""
    data: dict = field(default_factory=dict)
    extra_table: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_json(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def fmt(x: float) -> str:
    """A number for tables and verdict lines: 3 significant digits."""
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return str(x if np.isfinite(x) else ("inf" if x > 0 else "-inf")) if x != 0 else "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2e}"
    if float(x).is_integer() and abs(x) < 1e5:
        return f"{int(x)}"
    return f"{x:.3g}"


def rng_for(*keys: int) -> np.random.Generator:
    """A generator seeded from :data:`SEED` and the given integers."""
    return np.random.default_rng([SEED, *keys])


# -- populations and gradient draws -------------------------------------------
@dataclass(frozen=True)
class Population:
    """Rows x = Σ^{1/2} z with i.i.d. unit-variance z (docs/method.md's model)."""

    sigma: np.ndarray
    inputs: str = "gaussian"
    dof: float = 5.0

    @property
    def root(self) -> np.ndarray:
        return symmetric_sqrt(self.sigma)

    @property
    def dim(self) -> int:
        return len(self.sigma)

    @property
    def kurtosis(self) -> float:
        return excess_kurtosis(self.inputs, self.dof)


def synthetic_population(
    dim: int, condition_number: float, rng: np.random.Generator, *, rotate: bool = True,
    inputs: str = "gaussian", dof: float = 5.0,
) -> Population:
    """Σ with a geometric spectrum (mean eigenvalue 1, κ(Σ) as given), randomly rotated."""
    vals = spectrum(dim, condition_number, "geometric")
    basis = random_rotation(dim, rng) if rotate else np.eye(dim)
    return Population((basis * vals) @ basis.T, inputs, dof)


def offset_with_excess(sigma: np.ndarray, q: float, rng: np.random.Generator,
                       direction: np.ndarray | None = None) -> np.ndarray:
    """δ with δᵀΣδ = q, along ``direction`` or a random one."""
    delta = rng.standard_normal(len(sigma)) if direction is None else np.asarray(direction, float)
    scale = float(delta @ sigma @ delta)
    return delta * np.sqrt(q / scale) if q > 0 else np.zeros_like(delta)


def batch_gradients(
    pop: Population, delta: np.ndarray, batch_size: int, noise_var: float, count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` gradients (count, d) of n-row batches at w = w* + δ.

    Each batch has fresh rows x = Σ^{1/2}z and targets with Gaussian noise of
    total variance σ² = ``noise_var``: g = Xᵀ(Xδ − e)/n.
    """
    d, n = pop.dim, batch_size
    root = pop.root
    out = np.empty((count, d))
    step = max(1, CHUNK_FLOATS // (n * d))
    for start in range(0, count, step):
        k = min(step, count - start)
        X = (sample_unit_inputs(k * n, d, pop.inputs, rng, pop.dof) @ root).reshape(k, n, d)
        residual = X @ delta - np.sqrt(noise_var) * rng.standard_normal((k, n))
        out[start : start + k] = np.einsum("knd,kn->kd", X, residual) / n
    return out


def sigma_hat(grads: np.ndarray, coefficient: float) -> np.ndarray:
    """Σ̂ = a · (centred scatter)/(K − 1) of K gradients drawn at one w."""
    scatter, dof = centred_scatter(grads)
    return coefficient * scatter / dof


def calibration_coefficient(multiplier: float, batch_size: int) -> float:
    """n/σ²_total for population draws (no natural noise): 1/c, or 1 when c = 0."""
    return float(estimator_coefficients([multiplier], batch_size, batch_size)[0])


def gaussian_reference(cov: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sample covariance of ``count`` Gaussian vectors N(0, cov): the statistical
    limit for estimating ``cov`` from that many observations (same K − 1 dof)."""
    draws = rng.standard_normal((count, len(cov))) @ symmetric_sqrt(cov)
    scatter, dof = centred_scatter(draws)
    return scatter / dof


def whitened_prediction(dim: int, count: int) -> float:
    """2√(d/K) + d/K: the top of the Marchenko–Pastur bulk, minus 1."""
    ratio = dim / count
    return 2 * np.sqrt(ratio) + ratio


def whitened_condition(estimate: np.ndarray, sigma: np.ndarray) -> float:
    """κ(Σ^{-1/2} Σ̂ Σ^{-1/2}): 1 when Σ̂ ∝ Σ; scale-free (inf when singular)."""
    root_inv = symmetric_sqrt(sigma, inverse=True)
    vals = np.linalg.eigvalsh(root_inv @ estimate @ root_inv)
    return float(vals[-1] / vals[0]) if vals[0] > 0 else np.inf


# -- figures --------------------------------------------------------------------
def new_figure(ncols: int = 2, nrows: int = 1, width: float = 5.6, height: float = 4.3):
    fig = Figure(figsize=(width * ncols, height * nrows))  # object API: no pyplot state, no backend choice
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def save_figure(fig, out_dir: Path, name: str, title: str) -> str:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=100)
    return name


def style(ax, xlabel: str, ylabel: str, title: str = "", logx: bool = True, logy: bool = True,
          xticks=None) -> None:
    """Axis labels, log scales without crowded minor labels, a light grid;
    ``xticks`` labels the given x values (e.g. the K grid)."""
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if xticks is not None:
        ax.set_xticks(list(xticks), [fmt(x) for x in xticks])
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)


def two_legends(ax, colours: dict[str, str], markers: dict[str, str], fontsize: float = 7.5) -> None:
    """A colour legend and a marker/line-style legend on one axis (for grids of series)."""
    first = ax.legend([Line2D([], [], color=c, lw=2) for c in colours.values()], list(colours),
                      fontsize=fontsize, loc="upper right")
    ax.add_artist(first)
    ax.legend([Line2D([], [], color="k", ls=m.lstrip("os^xdv"), marker=m[0] if m[0] in "os^xdv" else None)
               for m in markers.values()], list(markers), fontsize=fontsize, loc="lower left")
