"""``fedsigma reproduce``: test the paper's six claims (docs/method.md#claims), one
experiment at a time, and write DIR/report.md, one PNG per experiment and
DIR/results.json. Every verdict is a measured number against a stated
criterion; the exit code is 0 when every check passes, 1 otherwise.

Experiments 1–5 and 7–9 draw many gradients at once with numpy (the same
``shared/`` maths as the federated runs); experiment 6 runs the real Flower
apps on the inline engine. Every RNG is seeded: the same command gives the same
numbers (only the timings differ).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedsigma.experiments.reproduce import applications, extensions, recovery, robustness
from fedsigma.experiments.reproduce.common import Check, Experiment
from fedsigma.experiments.reproduce.report import CLAIMS, claim_verdicts, machine, write_report
from shared.threads import single_thread

__all__ = ["reproduce", "EXPERIMENTS", "CLAIMS"]

EXPERIMENTS = (
    (1, "Σ̂ error vs the number of gradients K", recovery.sample_size),
    (2, "Far from the optimum: error vs q for several n", recovery.distance),
    (3, "Calibration: noise variance 0, n/4, n, 4n, 16n", recovery.calibration),
    (4, "Input distributions", robustness.inputs),
    (5, "Real data: diabetes", robustness.real_data),
    (6, "Preconditioning: rounds to target vs K", applications.preconditioning),
    (7, "Adversarial risk from gradients only", applications.adversarial),
    (8, "Differential injection vs plain calibration", extensions.differential),
    (9, "Label privacy (μ-GDP) of the injected noise", extensions.label_privacy),
)


def reproduce(quick: bool, out: Path, console: Console) -> int:
    """Run every experiment, write the report folder, print one verdict per claim.

    Returns the exit code: 0 when every check passed, 1 otherwise.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "full"
    console.print(f"[bold]fedsigma reproduce[/] ({mode}) → {escape(str(out))}", highlight=False)
    started = time.perf_counter()
    results: list[Experiment] = []
    # One BLAS thread: small matrices are far faster so, and sums come out in the same order everywhere.
    with single_thread():
        for number, title, run in EXPERIMENTS:
            t0 = time.perf_counter()
            try:
                result = run(quick, out)
            except Exception as exc:  # noqa: BLE001 — one broken experiment must not hide the others
                result = _crashed(number, title, exc)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            passed = sum(c.passed for c in result.checks)
            colour = "green" if result.passed else "red"
            console.print(
                f"  {number}. {escape(result.title)}: [{colour}]{passed}/{len(result.checks)} checks pass[/] "
                f"({result.seconds:.1f} s)", highlight=False,
            )
    seconds = time.perf_counter() - started
    verdicts = claim_verdicts(results)
    write_report(out, results, verdicts, quick=quick, seconds=seconds)
    for verdict in verdicts:
        colour = "green" if verdict["passed"] else "red"
        word = "PASS" if verdict["passed"] else "FAIL"
        console.print(f"[{colour}]{word}[/] {escape(verdict['line'])}", highlight=False, soft_wrap=True)
    info = machine()
    console.print(f"report: {escape(str(out / 'report.md'))} ({seconds:.0f} s on {info['cores']} cores)",
                  highlight=False)
    return 0 if all(r.passed for r in results) else 1


def _crashed(number: int, title: str, exc: Exception) -> Experiment:
    trace = "".join(traceback.format_exception(exc, limit=-4))
    return Experiment(
        number, title, "The experiment raised an exception before it finished.", "", [],
        [Check(f"experiment ran to the end ({type(exc).__name__}: {exc})", None, 0.0, ">=", 1.0)],
        notes=f"```\n{trace}\n```",
    )
