"""fedsigma ServerApp: read the scenario from the run config and run it."""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from scenarios.loader import scenario_from_run_config
from server.federated_run import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario named in the run config; results go to ``out-dir``."""
    cfg = context.run_config
    scenario = scenario_from_run_config(cfg)
    out = str(cfg.get("out-dir", "") or "")
    out_dir = Path(out) if out else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = out_dir.resolve()
    log(INFO, "fedsigma: scenario %s, results → %s", scenario.name, out_dir)
    summary = run_federation(
        grid, scenario, out_dir, engine=str(cfg.get("engine", "flwr-run")), method=str(cfg.get("method", "gradcov")),
        resume=bool(cfg.get("resume", False)),
    )
    log(INFO, "fedsigma: %s after %s rounds (target reached in %s)", summary["status"],
        summary["rounds_run"], summary["rounds_to_target"])
