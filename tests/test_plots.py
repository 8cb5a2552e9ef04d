"""The figures are drawn with matplotlib's object API: PNGs are written, and pyplot
(its global figure list and backend choice) is never imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from fedsigma.experiments.reproduce.common import new_figure, save_figure, style, two_legends
from shared.plots import plot_convergence
from shared.results import RoundsWriter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rounds_csv(path, with_sigma: bool) -> None:
    writer = RoundsWriter(path)
    for r in range(1, 9):
        writer.write({"round": r, "excess_risk": 0.5 ** r, "gradients_pooled": 16 * r,
                      "sigma_rel_error": 1.0 / r if with_sigma else None,
                      "sigma_whitened_error": 2.0 / r if with_sigma else None})
    writer.close()


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, (path, len(data))


@pytest.mark.parametrize("with_sigma", [True, False])
def test_convergence_png_is_written(tmp_path, with_sigma):
    _rounds_csv(tmp_path / "rounds.csv", with_sigma)
    out = tmp_path / "convergence.png"
    plot_convergence(tmp_path / "rounds.csv", out, title="t", target=1e-2, warmup_gradients=40)
    _assert_png(out)


def test_reproduce_figure_helpers_write_a_png(tmp_path):
    fig, axes = new_figure(2)
    assert len(axes) == 2
    for ax in axes:
        ax.plot([1, 10, 100], [1.0, 0.1, 0.01], color="tab:blue", ls="-")
        style(ax, "K", "error", "panel", xticks=[1, 10, 100])
    two_legends(axes[0], {"a": "tab:blue"}, {"line": "-"})
    assert save_figure(fig, tmp_path, "f.png", "title") == "f.png"
    _assert_png(tmp_path / "f.png")


def test_no_module_imports_pyplot(tmp_path):
    # A fresh interpreter: import every module that draws, draw, and check pyplot never loaded.
    code = (
        "import sys, pathlib\n"
        "import shared.plots, fedsigma.experiments.compare, fedsigma.experiments.reproduce\n"
        "import benchmarks.preconditioning as b\n"
        "from shared.results import RoundsWriter\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "w = RoundsWriter(out / 'rounds.csv'); w.write({'round': 1, 'excess_risk': 0.5}); w.close()\n"
        "shared.plots.plot_convergence(out / 'rounds.csv', out / 'c.png')\n"
        "b._plot_tradeoff('s', {32: (10.0, 1.0), 64: (8.0, 2.0)}, out / 't.png')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    for name in ("c.png", "t.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
