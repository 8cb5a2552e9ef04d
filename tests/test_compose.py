"""docker-compose.yml and the Dockerfile match what the localhost deployment tests run.

Every command, image tag, flag and port in the compose file is checked against the
deployment engine's own commands (the ones tests/test_deployment.py runs on
127.0.0.1), against Flower's ``--help``, and against the files scripts/make-certs.sh
writes; .ci/run also lints it with dclint, and .ci/compose-test runs both profiles
on a Docker engine with stand-ins for Flower's images (.ci/standins/).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from fedsigma.engines import compose as cp
from fedsigma.engines.deployment import (
    HEALTH_PATH,
    SUPERLINK_PORT,
    SUPERNODE_PORT,
    Certificates,
    fleet_gate_command,
    format_node_config,
    superlink_command,
    supernode_command,
)
from fedsigma.engines.processes import flower_command
from server.fleet_gate import allowed

ROOT = Path(__file__).resolve().parent.parent
FLWR = metadata.version("flwr")
CI_INDEX = "${CI_INDEX_URL:?the wheelhouse index that .ci/compose-test serves}"
CONTAINER_ONLY = ["--isolation", "process"]  # the SuperExecs are containers of their own
LOCATION_FLAGS = {"--host", "--port", "--superlink", "--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                  "--root-certificates", "--auth-supernode-private-key", "--runtime-api-address"}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _profile(spec: dict, name: str) -> dict:
    return {k: v for k, v in spec["services"].items() if v["profiles"] == [name]}


def _flags(cmd: list[str]) -> dict[str, str | None]:
    """{--flag: value or None} of a command line (program name dropped)."""
    out, args = {}, [a for a in cmd if not a.startswith("flower-")]
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            out[arg] = nxt
    return out


def test_committed_file_is_the_generators_output():
    assert (ROOT / "docker-compose.yml").read_text() == cp.render(3), (
        "docker-compose.yml is stale: python -m fedsigma.engines.compose --supernodes 3 > docker-compose.yml"
    )


def test_services_of_both_profiles(spec):
    assert all(len(s["profiles"]) == 1 for s in spec["services"].values())
    insecure, tls = _profile(spec, "insecure"), _profile(spec, "tls")
    assert set(insecure) == {"superlink", "fleet-gate", "superexec-serverapp", *(f"supernode-{i}" for i in (1, 2, 3)),
                             *(f"superexec-clientapp-{i}" for i in (1, 2, 3))}
    assert set(tls) == {"superlink-tls", "fleet-gate-tls", "superexec-serverapp-tls", "register-supernodes",
                        *(f"supernode-tls-{i}" for i in (1, 2, 3)), *(f"superexec-clientapp-tls-{i}" for i in (1, 2, 3))}
    for name, service in spec["services"].items():
        for dep in service.get("depends_on", []):
            assert dep in spec["services"] and spec["services"][dep]["profiles"] == service["profiles"], (name, dep)


@pytest.mark.parametrize("profile", ["insecure", "tls"])
def test_nothing_starts_before_the_superlink_answers_its_health_endpoint(spec, profile):
    """A SuperLink's open port is not readiness (Docker accepts before it listens): its
    healthcheck, and the Fleet gate's (which forwards it), ask GET /health, and what talks
    to them waits for service_healthy: the gate for the SuperLink, SuperNodes for the gate."""
    suffix = "-tls" if profile == "tls" else ""
    link_name, gate_name = "superlink" + suffix, "fleet-gate" + suffix
    scheme = "https" if profile == "tls" else "http"
    for name, port in ((link_name, SUPERLINK_PORT), (gate_name, cp.GATE_PORT)):
        test = spec["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert f"'{scheme}://127.0.0.1:{port}{HEALTH_PATH}'" in test[3], name
        assert ("cafile='/app/certs/ca.crt'" in test[3]) == (profile == "tls")
        compile(test[3], "healthcheck", "exec")
    for name, service in _profile(spec, profile).items():
        if name.startswith(("superexec-serverapp", "register-supernodes", "fleet-gate")):
            assert service["depends_on"][link_name] == {"condition": "service_healthy"}, name
        elif name.startswith("supernode"):
            assert service["depends_on"][gate_name] == {"condition": "service_healthy"}, name
            assert link_name not in service["depends_on"], name


def test_one_superexec_image_tag_for_every_service_that_builds(spec):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    built = {name: s for name, s in spec["services"].items() if "build" in s}
    assert len(built) == 11 and {s["image"] for s in built.values()} == {f"fedsigma/superexec:{version}"}
    assert len({str(s["build"]) for s in built.values()}) == 1


def test_ci_override_swaps_every_flower_image_and_only_that(spec):
    """CI's override (.ci/compose-test) replaces Flower's images by its stand-ins and points
    every build at its local index; the committed file keeps Flower's images."""
    override = yaml.safe_load((ROOT / ".ci" / "standins" / "compose.override.yml").read_text())["services"]
    assert set(override) == set(spec["services"])
    for name, service in spec["services"].items():
        if "build" in service:
            assert override[name] == {"build": {"network": "host", "args": {
                "FLWR_IMAGE": "fedsigma-ci/superexec", "PIP_INDEX_URL": CI_INDEX, "TORCH_INDEX_URL": CI_INDEX}}}
        else:
            assert override[name] == {"image": service["image"].replace("flwr/", "fedsigma-ci/")}, name
    standins = (ROOT / ".ci" / "standins" / "Dockerfile").read_text()
    for role in ("superlink", "supernode", "superexec"):
        assert f'FROM base AS {role}\nENTRYPOINT ["flower-{role}"]' in standins
    assert "--uid 49999" in standins and "WORKDIR /app" in standins and f"ARG FLWR_VERSION={FLWR}" in standins


def test_images_are_flowers_at_the_pinned_version(spec):
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"flwr[simulation]=={FLWR}" in pins
    for name, service in spec["services"].items():
        if "build" in service:  # SuperExecs: the project's Dockerfile, on flwr/superexec at the same version
            assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
            assert service["image"].startswith("fedsigma/superexec:"), name
        else:
            kind = "superlink" if name.startswith("superlink") else "supernode"
            assert service["image"] == f"flwr/{kind}:{FLWR}", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={FLWR}\n" in dockerfile and "ARG FLWR_IMAGE=flwr/superexec\n" in dockerfile
    assert "FROM ${FLWR_IMAGE}:${FLWR_VERSION}" in dockerfile
    torch = next(p for p in pins if p.startswith("torch=="))
    assert f" {torch}\n" in dockerfile
    for pkg in ("shared", "server", "client", "scenarios"):  # the app; the Fleet gate is server/fleet_gate.py
        assert f"COPY --chown=app:app {pkg} ./{pkg}\n" in dockerfile
    assert "COPY --chown=app:app fedsigma" not in dockerfile  # the tool around the app stays out of the image
    assert dockerfile.rstrip().endswith('WORKDIR /app\nENTRYPOINT ["flower-superexec"]')


@pytest.mark.parametrize("profile", ["insecure", "tls"])
def test_commands_are_the_localhost_commands_in_containers(spec, profile):
    """Same flags in the same order as on 127.0.0.1 (plus --isolation process), same values
    for every flag that is not a host, port or path; ports and addresses that connect."""
    services = _profile(spec, profile)
    suffix = "-tls" if profile == "tls" else ""
    local_certs = Certificates(Path("/tmp/certs")) if profile == "tls" else None
    link = services[f"superlink{suffix}"]
    local = superlink_command(41000, certs=local_certs)
    # tls: and the SuperExec auth secret, honoured with --isolation process only
    extra = CONTAINER_ONLY + (cp.SECRET_FLAG if profile == "tls" else [])
    n = len(extra)
    assert link["command"][:-n] != [] and link["command"][-n:] == extra
    assert list(_flags(link["command"][:-n])) == list(_flags(local))
    assert _same_values(_flags(link["command"]), _flags(local))
    assert _flags(link["command"])["--port"] == str(SUPERLINK_PORT)
    assert _flags(link["command"])["--host"] == "0.0.0.0"
    assert link["ports"] == [f"127.0.0.1:{cp.HOST_PORTS[profile]}:{SUPERLINK_PORT}"]
    if profile == "tls":
        assert "--enable-supernode-auth" in link["command"] and "--insecure" not in link["command"]
        # the certificate's names: what the ServerApp's SuperExec and the SuperNodes dial
        assert link["networks"][cp.CONTROL]["aliases"] == ["superlink"]
        assert services["fleet-gate-tls"]["networks"][cp.FLEET]["aliases"] == ["fleet-gate"]
        assert "DNS:superlink,DNS:fleet-gate," in (ROOT / "scripts" / "make-certs.sh").read_text()
    server = services[f"superexec-serverapp{suffix}"]
    assert _flags(server["command"])["--runtime-api-address"] == f"superlink:{SUPERLINK_PORT}"
    assert server["volumes"] == [f"./runs:{cp.RESULTS}"]
    partitions = []
    for i in (1, 2, 3):
        node = services[f"supernode{suffix}-{i}"]
        flags = _flags(node["command"])
        local = supernode_command(f"127.0.0.1:{41000}", 42000 + i, {"partition-id": i - 1, "num-partitions": 3},
                                  certs=local_certs, key=None if local_certs is None else local_certs.node_key(i - 1))
        assert node["command"][-n:] == extra
        assert list(_flags(node["command"][:-n])) == list(_flags(local))
        assert _same_values(flags, _flags(local))
        assert flags["--superlink"] == f"fleet-gate:{cp.GATE_PORT}" and flags["--port"] == str(SUPERNODE_PORT)
        partitions.append(flags["--node-config"])
        runner = services[f"superexec-clientapp{suffix}-{i}"]
        secret = {"--superexec-auth-secret-file": str(cp.SECRET)} if profile == "tls" else {}
        assert _flags(runner["command"]) == {"--insecure": None, "--runtime-api-address": f"supernode{suffix}-{i}:{SUPERNODE_PORT}",
                                             **secret}
        assert _flags(server["command"]).get("--superexec-auth-secret-file") == secret.get("--superexec-auth-secret-file")
        assert runner["depends_on"] == [f"supernode{suffix}-{i}"]
        if profile == "tls":
            assert flags["--auth-supernode-private-key"] == f"/app/certs/supernode-{i}"
    assert partitions == [format_node_config({"partition-id": k, "num-partitions": 3}) for k in range(3)]
    # the Fleet gate: the deployment engine's command, run with the image's python
    gate = services[f"fleet-gate{suffix}"]
    local = fleet_gate_command(f"0.0.0.0:{cp.GATE_PORT}", f"superlink:{SUPERLINK_PORT}",
                               certs=Certificates(cp.CERTS.folder) if profile == "tls" else None)
    assert gate["entrypoint"] == ["python", *local[1:3]] and gate["command"] == local[3:]


def _same_values(compose_flags: dict, local_flags: dict) -> bool:
    return all(compose_flags.get(flag) == value for flag, value in local_flags.items() if flag not in LOCATION_FLAGS)


def test_every_flag_exists_in_its_programs_help(spec):
    helps = {
        program: subprocess.run([flower_command(program), "--help"], capture_output=True, text=True, timeout=60).stdout
        for program in ("flower-superlink", "flower-supernode", "flower-superexec")
    }
    helps["fleet_gate"] = subprocess.run([sys.executable, "-m", "server.fleet_gate", "--help"],
                                         capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    for name, service in spec["services"].items():
        if name == "register-supernodes":
            continue
        program = ("fleet_gate" if name.startswith("fleet-gate") else
                   "flower-superlink" if name.startswith("superlink") else
                   "flower-supernode" if name.startswith("supernode") else "flower-superexec")
        for flag in _flags(service["command"]):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[program]), f"{name}: {program} has no {flag}"


def test_tls_files_are_mounted_where_the_flags_point(spec):
    made = {"ca.crt", "server.pem", "server.key", "superexec.secret"} | {f"supernode-{i}{ext}" for i in (1, 2, 3) for ext in ("", ".pub")}
    assert {Path(s["file"]).name for s in spec["secrets"].values()} == made
    assert all(s["file"].startswith("./certs/") for s in spec["secrets"].values())
    for name, service in _profile(spec, "tls").items():
        mounted = {m["target"] for m in service.get("secrets", [])}
        assert all(m["source"] in spec["secrets"] for m in service.get("secrets", []))
        paths = set(re.findall(r"/app/certs/[\w.-]*\w", " ".join(service["command"])))
        assert paths <= mounted, (name, paths - mounted)
        if name.startswith("superexec-clientapp"):  # SuperNode Runtime API: plain HTTP, but the secret
            assert paths == {str(cp.SECRET)}, name
        elif not name.startswith(("register-supernodes", "fleet-gate")):  # flwr CLI, gate: no Runtime API
            assert str(cp.SECRET) in paths, name


LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
GATE_MODULE = "server.fleet_gate"


def _published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port, short or long
    syntax; no host address means every interface."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((entry.get("host_ip", "0.0.0.0"), str(entry.get("published", "")), str(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        parts = ["0.0.0.0"] * (3 - len(parts)) + parts if len(parts) > 1 else ["0.0.0.0", "", parts[0]]
        out.append((parts[0], parts[1], parts[2]))
    return out


def _is_gate(service: dict) -> bool:
    return service.get("entrypoint", [])[-1:] == [GATE_MODULE]


def _network_names(service: dict) -> set[str]:
    nets = service.get("networks", ["default"])
    return set(nets)


def _aliases(service: dict, network: str) -> set[str]:
    nets = service.get("networks")
    return set((nets[network] or {}).get("aliases", [])) if isinstance(nets, dict) and network in nets else set()


def _exposure_problems(spec: dict) -> list[str]:
    """What in a compose file lets the network reach the SuperLink's Control API: the
    SuperLink's port published beyond loopback, anything but a Fleet gate facing the
    network, host networking, or a SuperNode that reaches the SuperLink other than
    through the gate. Empty: the file keeps the Control API on 127.0.0.1."""
    problems, services = [], spec["services"]
    for name, service in services.items():
        if "network_mode" in service:
            problems.append(f"{name}: network_mode {service['network_mode']} bypasses published ports")
        links = str(service.get("image", "")).split("/")[-1].startswith("superlink:")
        for host, port, target in _published(service):
            if links and host not in LOOPBACK:
                problems.append(f"{name}: SuperLink port {target} (Control API) published on {host}:{port}")
            elif not links and not _is_gate(service):
                problems.append(f"{name}: publishes {host}:{port}:{target} but is neither SuperLink nor Fleet gate")
            elif _is_gate(service):
                listen = _flags(service["command"])["--listen"].rpartition(":")[2]
                if target != listen:
                    problems.append(f"{name}: publishes container port {target}, the gate listens on {listen}")
    for profile in {s["profiles"][0] for s in services.values()}:
        members = {n: s for n, s in services.items() if s["profiles"] == [profile]}
        link_nets = set().union(*(_network_names(s) for s in members.values()
                                  if str(s.get("image", "")).split("/")[-1].startswith("superlink:")))
        gates = {n: s for n, s in members.items() if _is_gate(s)}
        for name, service in members.items():
            if name.startswith(("supernode", "superexec-clientapp")) and _network_names(service) & link_nets:
                problems.append(f"{name}: shares a network with the SuperLink")
            if name.startswith("supernode"):
                dial = _flags(service["command"])["--superlink"]
                host, _, port = dial.rpartition(":")
                ok = any((host == g or host in _aliases(g_s, net)) and port == _flags(g_s["command"])["--listen"].rpartition(":")[2]
                         and net in _network_names(service)
                         for g, g_s in gates.items() for net in _network_names(g_s))
                if not ok:
                    problems.append(f"{name}: dials {dial}, not a Fleet gate on its network")
    return problems


def test_only_the_fleet_gate_faces_the_network(spec):
    """Issue 13: the compose file publishes the SuperLink's one port (Control API included)
    on 127.0.0.1 only; the one port published beyond loopback is the tls Fleet gate's, and
    SuperNodes and ClientApps reach the SuperLink only through a gate."""
    assert _exposure_problems(spec) == []
    wide = {(name, host, port) for name, s in spec["services"].items()
            for host, port, _ in _published(s) if host not in LOOPBACK}
    assert wide == {("fleet-gate-tls", "0.0.0.0", str(cp.FLEET_PORTS["tls"][1]))}
    for name in ("superlink", "superlink-tls"):
        assert [h for h, _, _ in _published(spec["services"][name])] == ["127.0.0.1"]
    assert _network_names(spec["services"]["fleet-gate-tls"]) == {cp.CONTROL, cp.FLEET}
    # what the gate forwards: SuperNode traffic and the health probe, nothing of the Control API
    assert allowed("POST", "/v1/fleet/pull-messages") and allowed("GET", HEALTH_PATH)
    assert not allowed("POST", "/v1/control/list-runs") and not allowed("POST", "/v1/fleet/../control/stop-run")


def _redial(service: dict, address: str) -> None:
    cmd = service["command"]
    cmd[cmd.index("--superlink") + 1] = address


@pytest.mark.parametrize("attack, problem", [
    (lambda s: s["services"]["superlink-tls"].update(ports=["8443:8000"]), "Control API"),
    (lambda s: s["services"]["superlink"].update(ports=["0.0.0.0:8000:8000"]), "Control API"),
    (lambda s: s["services"]["superlink"].update(ports=[{"target": 8000, "published": 8000}]), "Control API"),
    (lambda s: s["services"]["supernode-tls-1"].update(ports=["9094:9094"]), "neither SuperLink nor Fleet gate"),
    (lambda s: s["services"]["superlink"].update(network_mode="host"), "network_mode"),
    (lambda s: s["services"]["supernode-2"].update(networks=["control", "fleet"]), "shares a network"),
    (lambda s: _redial(s["services"]["supernode-tls-3"], "superlink:8000"), "not a Fleet gate"),
])
def test_exposure_check_catches_each_way_to_open_the_control_api(spec, attack, problem):
    """The check above is not vacuous: each edit that would let the network (or a SuperNode)
    reach the Control API is reported."""
    bad = copy.deepcopy(spec)
    attack(bad)
    assert any(problem in p for p in _exposure_problems(bad)), _exposure_problems(bad)


def test_registration_script_is_valid_shell_and_registers_every_node(spec):
    script = spec["services"]["register-supernodes"]["command"][0].replace("$$", "$")
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    for i in (1, 2, 3):
        assert f"/app/certs/supernode-{i}.pub" in script
    nodes = [s for n, s in spec["services"].items() if n.startswith("supernode-tls-")]
    assert all(s["depends_on"]["register-supernodes"]["condition"] == "service_completed_successfully" for s in nodes)


def test_scaling_writes_n_supernodes_with_n_partitions():
    spec = yaml.safe_load(cp.render(5))
    for suffix in ("", "-tls"):
        configs = [_flags(spec["services"][f"supernode{suffix}-{i}"]["command"])["--node-config"] for i in range(1, 6)]
        assert configs == [format_node_config({"partition-id": k, "num-partitions": 5}) for k in range(5)]
        assert f"superexec-clientapp{suffix}-5" in spec["services"]
    assert "/app/certs/supernode-5.pub" in spec["services"]["register-supernodes"]["command"][0]
    assert "cert-supernode-5" in spec["secrets"]


def _dclint() -> str | None:
    local = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "dclint"
    return str(local) if local.exists() else shutil.which("dclint")


@pytest.mark.skipif(_dclint() is None, reason="dclint not installed (.ci/run installs it)")
def test_dclint_accepts_the_file_and_rejects_a_bad_key(tmp_path):
    ok = subprocess.run([_dclint(), str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((ROOT / "docker-compose.yml").read_text().replace("    restart: on-failure\n", "    restart_policy: 3\n", 1))
    rejected = subprocess.run([_dclint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert rejected.returncode != 0 and "invalid-schema" in rejected.stdout + rejected.stderr
