"""The simulation engine: Flower's Simulation Engine (Ray) behind a SuperLink we own.

Starts ``flower-superlink --simulation`` on a free 127.0.0.1 port, submits the
staged app with ``flwr run --stream`` (one SuperNode per client, one CPU per
ClientApp) and stops the SuperLink's whole process group when the run ends,
fails or is interrupted. Not the managed ``:local:`` mode, which leaves a
SuperLink running.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from client.policy import ENV_NODE_CONFIG
from fedsigma.engines import processes as fp
from scenarios.run_config import OUT_DIR

RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
RAY_ADDRESS = "RAY_ADDRESS"  # ray.init() with no address joins the cluster this names


def run_simulation(
    num_nodes: int, run_config: dict, log_path: Path, timeout: float = 3600.0, node_settings: dict | None = None,
    ray_address: str | None = None,
) -> None:
    """Run the ServerApp/ClientApp on Ray with ``num_nodes`` virtual SuperNodes.

    Flower's output goes to ``log_path``. Raises EngineError (with the log's
    tail) if the run does not finish and write its summary. ``node_settings``:
    node config entries every virtual node gets (Flower gives them none of their
    own), through the environment (client/policy.py, ``FEDSIGMA_NODE_CONFIG``).
    ``ray_address``: HOST:PORT of a running Ray cluster's head (``ray start --head``)
    to run the ClientApps on, across all its machines; None starts a private
    single-machine Ray. Flower's Ray backend calls ``ray.init()`` without an address,
    which joins the cluster named by ``RAY_ADDRESS``: we set it for the SuperLink and
    everything it starts.
    """
    out_dir = Path(run_config[OUT_DIR])
    with tempfile.TemporaryDirectory(prefix="fedsigma-sim-") as tmp, log_path.open("w") as log:
        tmp = Path(tmp)
        home = tmp / "home"
        env = fp.flower_env(home)
        env[ENV_NODE_CONFIG] = json.dumps(node_settings or {})
        # Ray's own switch for a single-machine cluster: its node address becomes the
        # loopback one, so the raylet, GCS and workers listen on 127.0.0.1 only (on Linux
        # Ray otherwise takes the machine's network address and listens on every interface)
        if ray_address is None:
            env[RAY_SINGLE_MACHINE] = "0"
        else:
            env[RAY_ADDRESS] = ray_address
        port = fp.free_port()
        fp.write_connection(home, f"127.0.0.1:{port}")
        app = fp.stage_app(tmp)
        config_file = fp.write_run_config(tmp / "run_config.toml", run_config)
        superlink = None
        try:
            superlink = fp.start(
                [fp.flower_command("flower-superlink"), "--simulation", "--insecure", "--host", "127.0.0.1",
                 "--port", str(port), "--disable-runtime-dependency-installation"],
                env, log,
            )
            fp.wait_for_port(port, superlink, 60, "flower-superlink")
            code = fp.run(
                [fp.flower_command("flwr"), "run", str(app), fp.CONNECTION, "--stream",
                 "--run-config", str(config_file),
                 "--federation-config", f"num-supernodes={num_nodes} client-resources-num-cpus=1"],
                env, log, timeout=timeout, cwd=tmp,
            )
        finally:
            fp.stop(superlink)
        log.flush()
        summary = out_dir / "summary.json"
        if code != 0 or not summary.is_file():
            raise fp.EngineError(
                f"simulation failed (flwr run exit {code}); log {log_path}:\n{fp.log_tail(log_path)}"
            )
        status = json.loads(summary.read_text()).get("status", "")
        if status.startswith("error"):
            raise fp.EngineError(f"simulation ServerApp failed: {status}; log {log_path}")
