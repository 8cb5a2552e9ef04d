"""Datasets: synthetic linear-regression data with a chosen Σ, and real tables.

Synthetic rows are x = A z with A = U·diag(√λ) (so E xxᵀ = Σ = U diag(λ) Uᵀ) and
z with i.i.d. unit-variance entries; targets y = xᵀw* + σ₀·e. Real tables are
standardised (every column to mean 0, variance 1) so that q = δᵀΣδ is O(1) in
target units, which the calibration rule needs (docs/method.md#calibration).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import linalg as scipy_linalg

CELL_MAX = 1e100  # a CSV cell's largest magnitude: squares of N such values still fit in float64

SPECTRA = ("geometric", "linear", "two_level", "spiked")
INPUTS = ("gaussian", "rademacher", "student_t")


def spectrum(dim: int, condition_number: float, shape: str, spikes: int = 10) -> np.ndarray:
    """Eigenvalues of Σ, largest first, with max/min = κ and mean 1 (tr Σ = d).

    shape: ``geometric`` (log-uniform), ``linear``, ``two_level`` (half at the
    top, half at the bottom) or ``spiked`` (``spikes`` at the top, the rest at
    the bottom: the low-rank-plus-ridge case).
    """
    top, bottom = 1.0, 1.0 / condition_number
    if dim == 1:
        vals = np.ones(1)
    elif shape == "geometric":
        vals = np.geomspace(top, bottom, dim)
    elif shape == "linear":
        vals = np.linspace(top, bottom, dim)
    elif shape == "two_level":
        vals = np.where(np.arange(dim) < (dim + 1) // 2, top, bottom)
    elif shape == "spiked":
        vals = np.where(np.arange(dim) < min(spikes, dim), top, bottom)
    else:
        raise ValueError(f"unknown spectrum {shape!r}; choose one of {SPECTRA}")
    return vals * dim / vals.sum()


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix of shape (d, d)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def sample_unit_inputs(
    rows: int, dim: int, kind: str, rng: np.random.Generator, dof: float = 5.0
) -> np.ndarray:
    """z of shape (rows, d) with i.i.d. mean-0, variance-1 entries of the given law.

    kind: ``gaussian``, ``rademacher`` or ``student_t`` (ν = dof > 2 degrees of
    freedom, scaled to unit variance).
    """
    if kind == "gaussian":
        return rng.standard_normal((rows, dim))
    if kind == "rademacher":
        return rng.choice([-1.0, 1.0], size=(rows, dim))
    if kind == "student_t":
        if dof <= 2:
            raise ValueError(f"student_t needs dof > 2 for a finite variance, got {dof}")
        return rng.standard_t(dof, size=(rows, dim)) * np.sqrt((dof - 2) / dof)
    raise ValueError(f"unknown input distribution {kind!r}; choose one of {INPUTS}")


def excess_kurtosis(kind: str, dof: float = 5.0) -> float:
    """κ₄ of the unit-variance entries drawn by :func:`sample_unit_inputs`."""
    if kind == "gaussian":
        return 0.0
    if kind == "rademacher":
        return -2.0
    if kind == "student_t":
        return 6.0 / (dof - 4) if dof > 4 else np.inf
    raise ValueError(f"unknown input distribution {kind!r}")


def synthetic_regression(
    rows: int,
    dim: int,
    condition_number: float,
    rng: np.random.Generator,
    shape: str = "geometric",
    rotate: bool = True,
    inputs: str = "gaussian",
    dof: float = 5.0,
    noise_std: float = 0.0,
    signal_variance: float = 1.0,
    spikes: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw a linear-regression data set with population second moment Σ.

    Returns
    -------
    X : ndarray (rows, d)
    y : ndarray (rows,)
    w_star : ndarray (d,), scaled so that w*ᵀΣw* = signal_variance
    sigma : ndarray (d, d), the population Σ; None for a rotated ``spiked``
        spectrum above d = 2000, which is drawn as x = √b·z + U·√(a − b)·ζ
        (U: d × spikes orthonormal, ζ Gaussian) without forming any d × d matrix
    """
    vals = spectrum(dim, condition_number, shape, spikes)
    if shape == "spiked" and rotate:
        return _spiked_regression(rows, dim, vals, min(spikes, dim), rng, inputs, dof, noise_std, signal_variance)
    basis = random_rotation(dim, rng) if rotate else np.eye(dim)
    sigma = (basis * vals) @ basis.T
    w_star = rng.standard_normal(dim)
    w_star *= np.sqrt(signal_variance / float(w_star @ sigma @ w_star))
    z = sample_unit_inputs(rows, dim, inputs, rng, dof)
    X = (z * np.sqrt(vals)) @ basis.T
    y = X @ w_star + noise_std * rng.standard_normal(rows)
    return X, y, w_star, sigma


def _spiked_regression(rows, dim, vals, spikes, rng, inputs, dof, noise_std, signal_variance):
    top, bottom = float(vals[0]), float(vals[-1])
    U = np.linalg.qr(rng.standard_normal((dim, spikes)))[0]
    w_star = rng.standard_normal(dim)
    proj = U.T @ w_star
    w_star *= np.sqrt(signal_variance / (bottom * float(w_star @ w_star) + (top - bottom) * float(proj @ proj)))
    X = np.sqrt(bottom) * sample_unit_inputs(rows, dim, inputs, rng, dof)
    X += (np.sqrt(top - bottom) * rng.standard_normal((rows, spikes))) @ U.T
    y = X @ w_star + noise_std * rng.standard_normal(rows)
    sigma = bottom * np.eye(dim) + (top - bottom) * (U @ U.T) if dim <= 2000 else None
    return X, y, w_star, sigma


def standardise(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale every feature column and the target to mean 0, variance 1.

    Constant columns are centred and left unscaled (they become zero).
    """
    mean, std = X.mean(axis=0), X.std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    y_std = y.std()
    return X, (y - y.mean()) / (y_std if y_std > 0 else 1.0)


def load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled diabetes table: X (442, 10), y (442,), unscaled."""
    from sklearn.datasets import load_diabetes as sk_load

    X, y = sk_load(return_X_y=True, scaled=False)
    return np.asarray(X, dtype=float), np.asarray(y, dtype=float)


def load_csv(path: str | Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a numeric CSV with a header row.

    Returns X (rows, d) of every column but ``target``, y (rows,) and the
    feature names. Raises ValueError naming the column or line that is wrong.
    """
    path = Path(path)
    try:
        return _read_csv(path, target)
    except csv.Error as exc:  # e.g. a NUL byte: not a ValueError
        raise ValueError(f"{path}: not a CSV table: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as UTF-8 CSV") from None


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: the file is empty") from None
        if target not in header:
            raise ValueError(f"{path}: no column {target!r}; columns are {header}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            try:
                rows.append([float(cell) for cell in row])
            except ValueError:
                bad = next(h for h, c in zip(header, row) if not _is_float(c))
                raise ValueError(
                    f"{path}:{line_no}: column {bad!r} is not numeric"
                ) from None
    if len(rows) < 2:
        raise ValueError(f"{path}: needs at least 2 data rows, has {len(rows)}")
    table = np.asarray(rows)
    bad = ~(np.abs(table) <= CELL_MAX)  # nan, ±inf and values whose squares overflow
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: row {row + 1} (line {row + 2}), column {header[column]!r}: {rows[row][column]!r} is not a "
            f"finite number of magnitude ≤ {CELL_MAX:g} ({int(bad.sum())} such cells)"
        )
    col = header.index(target)
    features = [h for i, h in enumerate(header) if i != col]
    if not features:
        raise ValueError(f"{path}: no feature columns besides the target {target!r}")
    return np.delete(table, col, axis=1), table[:, col], features


def check_regression_table(X: np.ndarray, y: np.ndarray, features: list[str], target: str, path: str | Path) -> None:
    """Raise ValueError (one line naming the column) unless (X, y) can be regressed:
    a target that varies, no constant feature column, and linearly independent
    feature columns (rank d, which needs more rows than features).

    Parameters
    ----------
    X : ndarray (rows, d)
    y : ndarray (rows,)
    features : list of str, the d column names of X
    target : str, the target column's name
    path : the file, for the message
    """
    if np.ptp(y) == 0:
        raise ValueError(f"{path}: the target column {target!r} is constant ({y[0]:g}): nothing to learn")
    constant = [name for name, spread in zip(features, np.ptp(X, axis=0)) if spread == 0]
    if constant:
        raise ValueError(f"{path}: constant feature column(s) {', '.join(map(repr, constant))}: remove them")
    rows, dim = X.shape
    if rows <= dim:
        raise ValueError(f"{path}: {rows} rows for {dim} feature columns; Σ needs more rows than features")
    Z, _ = standardise(X, y)
    _, R, order = scipy_linalg.qr(Z, mode="economic", pivoting=True)
    diag = np.abs(np.diag(R))
    rank = int((diag > diag[0] * max(rows, dim) * np.finfo(float).eps * 1e3).sum())
    if rank < dim:
        raise ValueError(
            f"{path}: the feature columns are linearly dependent (rank {rank} of {dim}); "
            f"e.g. {features[order[rank]]!r} is a combination of the others: remove it"
        )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
