"""fedsigma ServerApp: read the scenario from the run config and run it."""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from scenarios import run_config
from server.federated_run import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario and method in the run config (scenarios.run_config); results go to ``out-dir``."""
    cfg = run_config.decode(context.run_config)
    scenario = cfg.scenario
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = out_dir.resolve()
    log(INFO, "fedsigma: scenario %s, method %s, results → %s", scenario.name, cfg.method, out_dir)
    summary = run_federation(grid, scenario, out_dir, engine=cfg.engine, method=cfg.method, resume=cfg.resume)
    log(INFO, "fedsigma: %s after %s rounds (target reached in %s)", summary["status"],
        summary["rounds_run"], summary["rounds_to_target"])
