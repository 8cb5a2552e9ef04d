"""docker-compose.yml and the Dockerfile match what the localhost deployment tests run.

Every command, image tag, flag and port in the compose file is checked against the
deployment engine's own commands (the ones tests/test_deployment.py runs on
127.0.0.1), against Flower's ``--help``, and against the files scripts/make-certs.sh
writes; .ci/run also lints it with dclint, and .ci/compose-test runs both profiles
on a Docker engine with stand-ins for Flower's images (.ci/standins/).
"""

from __future__ import annotations

import re
import shutil
import subprocess
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
    format_node_config,
    superlink_command,
    supernode_command,
)
from fedsigma.engines.processes import flower_command

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
    assert set(insecure) == {"superlink", "superexec-serverapp", *(f"supernode-{i}" for i in (1, 2, 3)),
                             *(f"superexec-clientapp-{i}" for i in (1, 2, 3))}
    assert set(tls) == {"superlink-tls", "superexec-serverapp-tls", "register-supernodes",
                        *(f"supernode-tls-{i}" for i in (1, 2, 3)), *(f"superexec-clientapp-tls-{i}" for i in (1, 2, 3))}
    for name, service in spec["services"].items():
        for dep in service.get("depends_on", []):
            assert dep in spec["services"] and spec["services"][dep]["profiles"] == service["profiles"], (name, dep)


@pytest.mark.parametrize("profile", ["insecure", "tls"])
def test_nothing_starts_before_the_superlink_answers_its_health_endpoint(spec, profile):
    """A SuperLink's open port is not readiness (Docker accepts before it listens): its
    healthcheck asks GET /health, and what talks to it waits for service_healthy."""
    link_name = "superlink" + ("-tls" if profile == "tls" else "")
    link = spec["services"][link_name]
    test = link["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    scheme = "https" if profile == "tls" else "http"
    assert f"'{scheme}://127.0.0.1:{SUPERLINK_PORT}{HEALTH_PATH}'" in test[3]
    assert ("cafile='/app/certs/ca.crt'" in test[3]) == (profile == "tls")
    compile(test[3], "healthcheck", "exec")
    for name, service in _profile(spec, profile).items():
        if name.startswith(("supernode", "superexec-serverapp", "register-supernodes")):
            assert service["depends_on"][link_name] == {"condition": "service_healthy"}, name


def test_one_superexec_image_tag_for_every_service_that_builds(spec):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    built = {name: s for name, s in spec["services"].items() if "build" in s}
    assert len(built) == 9 and {s["image"] for s in built.values()} == {f"fedsigma/superexec:{version}"}
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
    for pkg in ("shared", "server", "client", "scenarios"):
        assert f"COPY --chown=app:app {pkg} ./{pkg}\n" in dockerfile
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
        assert link["networks"]["default"]["aliases"] == ["superlink"]  # the certificate's name
        assert "DNS:superlink" in (ROOT / "scripts" / "make-certs.sh").read_text()
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
        assert flags["--superlink"] == f"superlink:{SUPERLINK_PORT}" and flags["--port"] == str(SUPERNODE_PORT)
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


def _same_values(compose_flags: dict, local_flags: dict) -> bool:
    return all(compose_flags.get(flag) == value for flag, value in local_flags.items() if flag not in LOCATION_FLAGS)


def test_every_flag_exists_in_flowers_help(spec):
    helps = {
        program: subprocess.run([flower_command(program), "--help"], capture_output=True, text=True, timeout=60).stdout
        for program in ("flower-superlink", "flower-supernode", "flower-superexec")
    }
    for name, service in spec["services"].items():
        if name == "register-supernodes":
            continue
        program = ("flower-superlink" if name.startswith("superlink") else
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
        elif name != "register-supernodes":  # the flwr CLI: no Runtime API
            assert str(cp.SECRET) in paths, name


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
