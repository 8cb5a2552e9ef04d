"""convergence.png: excess risk (log) and Σ̂ error against rounds."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

from shared.results import read_rounds


def plot_convergence(
    rounds_csv: Path,
    out_png: Path,
    title: str = "",
    target: float | None = None,
    warmup_gradients: int | None = None,
    no_sigma: str = "no Σ̂ (preconditioner off or truth unknown)",
) -> None:
    """Two panels from a rounds.csv: relative excess risk, and Σ̂'s errors.

    The dashed line marks the target; the shaded band, the warm-up rounds
    (fewer than ``warmup_gradients`` probes pooled, P = I/λ̂_max); rounds
    without a known value are skipped. ``no_sigma`` is written on the Σ panel when
    no round has a Σ̂ error (say why: the method estimates none, or Σ is unknown).
    """
    rows = read_rounds(rounds_csv)
    fig = Figure(figsize=(11, 4.2))  # no pyplot: no backend to pick, no global figure list to close
    ax1, ax2 = fig.subplots(1, 2)
    x = [r["round"] for r in rows]

    def series(key):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        return [a for a, _ in pts], [b for _, b in pts]

    rx, ry = series("excess_risk")
    if rx:  # w₀ has relative excess risk 1 by definition
        rx, ry = [0.0, *rx], [1.0, *ry]
    ax1.semilogy(rx, [max(v, 1e-300) for v in ry], lw=2, marker="o" if len(rx) < 30 else None, ms=4,
                 label="relative excess risk")
    if target:
        ax1.axhline(target, ls="--", color="grey", label=f"target {target:g}")
    # a few labelled decades and no minor ticks: a run to 1e-19 would draw hundreds of ticks
    ax1.yaxis.set_major_locator(LogLocator(numticks=8))
    ax1.yaxis.set_minor_locator(NullLocator())
    ax1.set_xlabel("round")
    ax1.set_ylabel("(L(w) − L*) / (L(w₀) − L*)")
    ax1.set_title("training", y=1.0)  # a fixed y: no search for overlapping tick labels
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    for key, label in (("sigma_rel_error", "‖Σ̂ − Σ‖/‖Σ‖"), ("sigma_whitened_error", "‖Σ^-½Σ̂Σ^-½ − I‖")):
        sx, sy = series(key)
        if sx:
            ax2.semilogy(sx, sy, lw=2, label=label)
    ax2.axhline(0.1, ls=":", color="grey")
    ax2.set_xlabel("round")
    ax2.set_ylabel("operator-norm error")
    ax2.set_title("Σ̂ recovered from gradients", y=1.0)
    ax2.grid(True, which="both", alpha=0.3)
    if ax2.lines[1:]:
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, no_sigma, ha="center", transform=ax2.transAxes)
    if warmup_gradients is not None:
        warm = [r["round"] for r in rows if (r.get("gradients_pooled") or 0) < warmup_gradients]
        if warm:
            for ax in (ax1, ax2):
                ax.axvspan(0, max(warm) + 0.5, color="orange", alpha=0.12, lw=0)
            ax1.text(0.3, 0.03, "warm-up", transform=ax1.get_xaxis_transform(), color="darkorange")
    if title:
        fig.suptitle(title)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers

        if x:
            ax.set_xlim(0, max(x) + 1)
    # fixed margins: tight_layout measures every tick label, half the cost of a plot
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.12, top=0.84 if title else 0.9, wspace=0.22)
    fig.savefig(out_png, dpi=110)
