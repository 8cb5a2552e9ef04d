"""The scenario schema: every knob of a fedsigma run, validated by pydantic.

A scenario is a TOML file with the sections below; every key has a default, so
an empty file is a valid (small, synthetic) scenario. Unknown keys are errors.
"""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from shared.data import check_regression_table, load_csv

# Strict scalar types for every scenario key (and for sections other modules add):
# no inf/nan (JSON has no inf: it would come back as null), no bool for a number
# (``count = true`` is not 1), no float for an int (``dim = 4.5``), no "1" strings.
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]

NAME_MAX_CHARS = 100
# κ above 1e12 is below float64's resolution of Σ = XᵀX/N: λmin drowns in rounding
# (κ = 1e300 reported a negative excess risk as success).
KAPPA_MAX = 1e12
RATE_MAX = 1e6  # learning rates: a step this large diverges in one round anyway


def plain_file_name(value: str) -> str:
    """Check that ``value`` is usable as one folder name under runs/: no path
    separators, no ``..``, no NUL or control characters, no leading dot, not empty."""
    if not value or len(value) > NAME_MAX_CHARS:
        raise ValueError(f"must be 1 to {NAME_MAX_CHARS} characters (it names the results folder)")
    if "/" in value or "\\" in value:
        raise ValueError("must be a plain file name, without '/' or '\\' (it names the results folder under runs/)")
    if value.startswith("."):
        raise ValueError("must not start with '.' (it names the results folder under runs/)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not hold NUL or other control characters (it names the results folder)")
    return value


FileName = Annotated[str, AfterValidator(plain_file_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Data(_Section):
    """Where the rows come from."""

    kind: Literal["synthetic", "diabetes", "csv", "nodes"] = "synthetic"
    dim: StrictInt = Field(20, ge=1, le=20000, description="d, synthetic features (kind = nodes: columns but the target)")
    condition_number: FiniteFloat = Field(10.0, ge=1.0, le=KAPPA_MAX, description="κ(Σ) = λmax/λmin")
    spectrum: Literal["geometric", "linear", "two_level", "spiked"] = "geometric"
    spikes: StrictInt = Field(10, ge=1, description="large eigenvalues of a 'spiked' spectrum")
    rotate: StrictBool = Field(True, description="random rotation of Σ's eigenbasis")
    inputs: Literal["gaussian", "rademacher", "student_t"] = "gaussian"
    student_t_dof: FiniteFloat = Field(5.0, gt=2.0, le=1e6, description="ν for student_t inputs")
    rows_per_client: StrictInt = Field(500, ge=2, description="average rows per client")
    noise_std: FiniteFloat = Field(0.5, ge=0.0, le=1e6, description="σ₀, natural target noise")
    signal_variance: FiniteFloat = Field(1.0, gt=0.0, le=1e12, description="w*ᵀΣw*")
    path: Path | None = Field(None, description="CSV file (kind = csv)")
    target: str | None = Field(None, description="target column (kind = csv; kind = nodes: the default)")
    paths: list[Path] | None = Field(
        None, description="kind = nodes: one CSV per client, sent to node k as its node config data-path"
    )

    @model_validator(mode="after")
    def _spikes_below_dim(self) -> Data:
        if self.spectrum == "spiked" and self.kind == "synthetic" and self.dim > 1 and self.spikes >= self.dim:
            raise ValueError(
                f"data.spikes: {self.spikes} spikes of d = {self.dim} leave no small eigenvalue (κ = 1); "
                f"set data.spikes below {self.dim}"
            )
        return self

    @model_validator(mode="after")
    def _csv_needs_file(self) -> Data:
        if self.kind == "csv":
            if self.path is None:
                raise ValueError("data.path: kind = 'csv' needs a path to the CSV file")
            if self.target is None:
                raise ValueError("data.target: kind = 'csv' needs the target column's name")
            if not self.path.is_file():
                raise ValueError(f"data.path: no such file {str(self.path)!r}")
            try:  # read it now: a bad table must fail before any process starts
                check_regression_table(*load_csv(self.path, self.target), self.target, self.path)
            except (ValueError, OSError) as exc:
                field = "data.target" if "no column" in str(exc) or "target column" in str(exc) else "data.path"
                raise ValueError(f"{field}: {exc}") from None
        if self.kind == "nodes":
            self._check_node_tables()
        elif self.paths is not None:
            raise ValueError("data.paths: only for kind = 'nodes' (one CSV per node); use data.path for kind = 'csv'")
        return self

    def _check_node_tables(self) -> None:
        """kind = nodes: each node reads its own CSV (node config ``data-path``, ``target``);
        files listed here are checked now, before any process starts."""
        if "dim" not in self.model_fields_set:
            raise ValueError("data.dim: kind = 'nodes' needs the number of feature columns every node's CSV has")
        if self.paths and self.target is None:
            raise ValueError("data.target: kind = 'nodes' with data.paths needs the target column's name")
        for k, path in enumerate(self.paths or []):
            if not path.is_file():
                raise ValueError(f"data.paths[{k}]: no such file {str(path)!r}")
            try:
                _, y, names = load_csv(path, self.target)
            except (ValueError, OSError) as exc:
                field = "data.target" if "no column" in str(exc) else f"data.paths[{k}]"
                raise ValueError(f"{field}: {exc}") from None
            features = len(names)
            if y.min() == y.max():
                raise ValueError(f"data.paths[{k}]: {path}: the target column {self.target!r} is constant: "
                                 "nothing to learn")
            if features != self.dim:
                raise ValueError(f"data.paths[{k}]: {path} has {features} feature columns, data.dim = {self.dim}")


class Partition(_Section):
    """How the pooled rows are split across clients."""

    kind: Literal["iid", "covariate_shift", "size_skew"] = "iid"
    shift_strength: FiniteFloat = Field(0.9, ge=0.0, le=1.0, description="0 = IID, 1 = slabs")
    size_alpha: FiniteFloat = Field(0.5, gt=0.0, le=1e6, description="Dirichlet α of shard sizes")


class Clients(_Section):
    count: StrictInt = Field(10, ge=1, le=100000)
    fraction: FiniteFloat = Field(1.0, gt=0.0, le=1.0, description="sampled per round")


class Protocol(_Section):
    """What each client computes per round."""

    batch_size: StrictInt = Field(64, ge=1, description="n, rows per probe batch")
    probes: StrictInt = Field(4, ge=2, description="probe gradients per client per round")
    calibration: FiniteFloat = Field(1.0, ge=0.0, le=1e6, description="c: total noise variance = c·n")
    noise_var: FiniteFloat | None = Field(
        None, ge=0.0, le=1e12, description="known σ₀²; default: data.noise_std² (synthetic), 0 (real)"
    )
    differential: StrictBool = Field(False, description="two noise levels, cancels δ-bias and σ₀²")
    differential_low: FiniteFloat = Field(0.25, ge=0.0, lt=1.0, description="low level = this·c·n")
    label_clip: FiniteFloat | None = Field(
        None, gt=0.0, le=1e12,
        description="B: probes use targets clipped to [−B, B], so each is a μ = 2B/σ_inj Gaussian "
                    "mechanism on the labels (shared.privacy); None = no clipping",
    )

    probe_dtype: Literal["float64", "float32", "float16"] = Field(
        "float32", description="dtype of the probes on the wire (noisy on purpose, so float64 buys nothing); "
                               "the training gradient is always float64",
    )

    @model_validator(mode="after")
    def _differential_needs_noise(self) -> Protocol:
        if self.differential and self.calibration == 0:
            raise ValueError(
                "protocol.calibration: differential injection needs calibration > 0 "
                "(two distinct noise levels); raise it or set protocol.differential = false"
            )
        return self


class Preconditioner(_Section):
    enabled: StrictBool = Field(True, description="false = plain FedSGD (no probes)")
    ridge: FiniteFloat | None = Field(None, ge=0.0, le=1e12, description="λ; default ridge_fraction·tr(Σ̂)/d")
    ridge_fraction: FiniteFloat = Field(1e-3, ge=0.0, le=1e6)
    refresh_every: StrictInt = Field(1, ge=1, description="rounds between refreshes of P")
    warmup_gradients: StrictInt | None = Field(
        None, ge=0, description="probe gradients pooled before the first P; default 10·d (10·rank)"
    )
    max_gradients: StrictInt | None = Field(
        None, ge=1, description="stop probing once this many probe gradients are pooled; None = every round"
    )
    rank: StrictInt | None = Field(
        None, ge=1, description="low-rank-plus-ridge P of this rank (Woodbury; for large d); None = dense"
    )
    adaptive_probes: StrictBool = Field(
        True, description="stop probing once more probes save no round (split-half Σ̂ error; dense Σ̂ only)"
    )


class Training(_Section):
    learning_rate: FiniteFloat | Literal["auto"] = Field(
        "auto", description="η; auto = 1 with P and exact gradients, else 0.5; 1/λmax(Σ) (oracle-tuned) without P"
    )
    gradient: Literal["full", "minibatch"] = "full"
    noisy_targets: StrictBool = Field(False, description="train on calibrated noisy targets")
    local_steps: StrictInt = Field(0, ge=0, description="0 = send the gradient")
    local_learning_rate: FiniteFloat | Literal["auto"] = Field(
        "auto", description="clients' step in local steps; auto = 0.5 with P, 1/λmax(Σ) without"
    )
    line_search_memory: StrictInt = Field(
        20, ge=0, le=1000,
        description="with P and exact gradients, past steps the server minimises over and sizes its "
                    "step from (shared.secant); 0 = plain w − η·P·ḡ steps",
    )
    round_timeout: FiniteFloat = Field(
        600.0, gt=0.0, le=86400.0,
        description="seconds the server waits for a round's replies, on every engine; a client that has not "
                    "replied by then counts as failed for that round and is asked again the next one",
    )

    @model_validator(mode="after")
    def _positive_rate(self) -> Training:
        for name in ("learning_rate", "local_learning_rate"):
            value = getattr(self, name)
            if value != "auto" and not 0 < value <= RATE_MAX:
                raise ValueError(f"training.{name}: must be in (0, {RATE_MAX:g}] or 'auto' (got {value!r})")
        return self


class Stop(_Section):
    max_rounds: StrictInt = Field(100, ge=1, le=10_000_000)
    target: FiniteFloat = Field(1e-6, gt=0.0, lt=1.0, description="relative excess risk")


BYZANTINE_KINDS = (
    "nan", "inf", "wrong_shape", "scale", "sign_flip", "random", "uncalibrated", "inflate_count", "flood",
)


class Faults(_Section):
    """Faults injected inside the ClientApp (client/faults.py), on every engine, seeded
    by the scenario seed: the same seed picks the same faulty clients and drops the same
    replies."""

    dropout: FiniteFloat = Field(
        0.0, ge=0.0, lt=1.0,
        description="probability that a sampled client does not reply in a round",
    )
    stragglers: FiniteFloat = Field(
        0.0, ge=0.0, le=1.0, description="fraction of clients that reply late every round"
    )
    straggler_delay: FiniteFloat = Field(
        0.0, ge=0.0, le=86400.0, description="seconds a straggler waits before replying"
    )
    byzantine: StrictInt = Field(0, ge=0, le=100000, description="clients whose every reply is corrupted (byzantine_kind)")
    byzantine_kind: Literal[BYZANTINE_KINDS] = Field(
        "random",
        description="nan, inf: non-finite arrays; wrong_shape: one extra entry; scale: ×1e6; sign_flip: −x; "
                    "random: noise of the honest size; uncalibrated: probes with c = 0; "
                    "inflate_count: num-examples ×1e9; flood: 10⁶ probes",
    )

    @field_validator("byzantine_kind", mode="before")
    @classmethod
    def _kind_from_float(cls, value: object) -> object:
        # `--set faults.byzantine_kind=nan` (or inf) reads as a TOML float: take its name
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else "inf"
        return value


class Scenario(_Section):
    """A whole run: data, partition, clients, protocol, preconditioner, training, stop, faults."""

    name: FileName = "scenario"
    description: str = ""
    seed: StrictInt = Field(0, ge=0, lt=2**63)
    engine: Literal["inline", "simulation", "deployment"] = "inline"
    data: Data = Field(default_factory=Data)
    partition: Partition = Field(default_factory=Partition)
    clients: Clients = Field(default_factory=Clients)
    protocol: Protocol = Field(default_factory=Protocol)
    preconditioner: Preconditioner = Field(default_factory=Preconditioner)
    training: Training = Field(default_factory=Training)
    stop: Stop = Field(default_factory=Stop)
    faults: Faults = Field(default_factory=Faults)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.faults.byzantine > self.clients.count:
            raise ValueError(
                f"faults.byzantine: {self.faults.byzantine} Byzantine clients but clients.count = "
                f"{self.clients.count}; lower it"
            )
        if self.data.kind == "nodes":
            return self._nodes_consistent()
        total, count, batch = self.total_rows(), self.clients.count, self.protocol.batch_size
        if count > total:
            raise ValueError(f"clients.count: {count} clients but only {total} rows of data")
        rank = self.preconditioner.rank
        if rank is not None and rank >= self.dim():
            raise ValueError(f"preconditioner.rank: {rank} must be below d = {self.dim()}; or remove it (dense P)")
        if rank is not None and self.training.local_steps > 0:
            raise ValueError("training.local_steps: local steps need a dense P; set 0 or remove preconditioner.rank")
        # size_skew guarantees every shard batch_size rows; other partitions split evenly
        smallest = batch if self.partition.kind == "size_skew" else total // count
        if batch > smallest or count * batch > total:
            raise ValueError(
                f"protocol.batch_size: {batch} rows per batch but the smallest client "
                f"holds {min(smallest, total // count)}; lower it or give clients more rows"
            )
        return self

    def _nodes_consistent(self) -> Scenario:
        paths, count, batch = self.data.paths, self.clients.count, self.protocol.batch_size
        if paths is None:
            return self  # the nodes' node configs name their files: checked by each client
        if len(paths) != count:
            raise ValueError(f"data.paths: {len(paths)} files for clients.count = {count}; give one per client")
        for k, path in enumerate(paths):
            if (rows := _csv_rows(path)) < batch:
                raise ValueError(
                    f"protocol.batch_size: {batch} rows per batch but data.paths[{k}] holds {rows}; lower it"
                )
        return self

    def has_oracle(self) -> bool:
        """Whether the simulator knows the pooled data (and so the true Σ and the optimum):
        not when each node brings its own (data.kind = "nodes")."""
        return self.data.kind != "nodes"

    def total_rows(self) -> int:
        """Rows in the union of all clients' data."""
        if self.data.kind == "synthetic":
            return self.data.rows_per_client * self.clients.count
        if self.data.kind == "diabetes":
            return 442
        if self.data.kind == "nodes":  # only the files listed here: nodes may bring others
            return sum(_csv_rows(path) for path in self.data.paths or [])
        return _csv_rows(self.data.path)

    def natural_noise_var(self) -> float:
        """σ₀² that clients subtract from their injected variance."""
        if self.protocol.noise_var is not None:
            return self.protocol.noise_var
        return self.data.noise_std**2 if self.data.kind == "synthetic" else 0.0

    def dim(self) -> int:
        """d, the number of features (and parameters)."""
        if self.data.kind in ("synthetic", "nodes"):
            return self.data.dim
        if self.data.kind == "diabetes":
            return 10
        return _csv_columns(self.data.path) - 1


def _csv_rows(path: Path | None) -> int:
    return _csv_shape(str(path), Path(path).stat().st_mtime_ns)[0]


def _csv_columns(path: Path | None) -> int:
    return _csv_shape(str(path), Path(path).stat().st_mtime_ns)[1]


@lru_cache(maxsize=32)
def _csv_shape(path: str, mtime_ns: int) -> tuple[int, int]:
    """(data rows, columns) of a CSV, parsed once per file version (validation asks often)."""
    with open(path, newline="") as handle:
        first = next(csv.reader(handle))[0].strip()
    _, y, features = load_csv(path, first)
    return len(y), len(features) + 1
