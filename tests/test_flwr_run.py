"""``flwr run .`` with the defaults in pyproject's [tool.flwr.app.config] runs the quickstart."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fedsigma.engines import processes as fp

pytestmark = pytest.mark.slow  # starts Ray or Flower server processes

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_flwr_run_dot_with_pyproject_defaults(tmp_path):
    # `flwr build` rejects folder names with "_": run from a copy named like the app,
    # holding the real pyproject.toml and the app's packages.
    app = tmp_path / "fedsigma"
    app.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", app / "pyproject.toml")
    for pkg in fp.PACKAGES:
        shutil.copytree(ROOT / pkg, app / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    # Ray puts unix sockets under RAY_TMPDIR (= FLWR_HOME here): keep the path short.
    home, cwd = Path(tempfile.mkdtemp(prefix="fs-")), tmp_path / "superlink"
    cwd.mkdir()
    env = fp.flower_env(home)
    port = fp.free_port()
    fp.write_connection(home, f"127.0.0.1:{port}")
    log_path = tmp_path / "flower.log"
    superlink = None
    with log_path.open("w") as log:
        try:
            superlink = subprocess.Popen(
                [fp.flower_command("flower-superlink"), "--simulation", "--insecure", "--host", "127.0.0.1",
                 "--port", str(port), "--disable-runtime-dependency-installation"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            )
            fp.wait_for_port(port, superlink, 60, "flower-superlink")
            done = subprocess.run(
                [fp.flower_command("flwr"), "run", ".", "--stream",
                 "--federation-config", "num-supernodes=10 client-resources-num-cpus=1"],
                cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=200,
            )
        finally:
            fp.stop(superlink)
            shutil.rmtree(home, ignore_errors=True)
    assert done.returncode == 0, fp.log_tail(log_path, 40)
    # pyproject defaults: scenario = "quickstart", out-dir = "" → runs/<name>-<time>/ in the ServerApp's cwd
    summaries = list(cwd.glob("runs/quickstart-*/summary.json"))
    assert len(summaries) == 1, fp.log_tail(log_path, 40)
    summary = json.loads(summaries[0].read_text())
    assert summary["engine"] == "flwr-run"
    assert summary["rounds_to_target"] is not None
    assert (ROOT / "pyproject.toml").read_text() == (app / "pyproject.toml").read_text()
