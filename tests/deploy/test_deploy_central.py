"""deploy/central: the compose file parses, and everything it points at exists.

Docker is not run here. What can go wrong without running it is checked:
YAML syntax, a bind mount or build context that points nowhere, a Dockerfile
that copies something the repository does not have, ports published to the
world that should stay on loopback, and the central broker drifting from the
site broker's authentication rules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CENTRAL = REPO / "deploy" / "central"
COMPOSE = CENTRAL / "compose.yaml"

# Created on the server by the README's first-start steps (secrets, never in git).
MADE_ON_SERVER = {
    CENTRAL / "mosquitto" / "passwd",
    CENTRAL / "mosquitto" / "certs",
}
# Owned by the Grafana part of deploy/; the compose file mounts them by contract.
GRAFANA_DIRS = {
    REPO / "deploy" / "grafana" / "provisioning",
    REPO / "deploy" / "grafana" / "dashboards",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path resolved against the compose file, container path) of bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "use the short volume syntax"
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", source)
            mounts.append(((CENTRAL / source).resolve(), target))
    return mounts


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"mosquitto", "influxdb", "rules", "console", "grafana"}
    assert set(compose["volumes"]) >= {
        "mosquitto-data", "influxdb-data", "rules-state", "console-state",
    }  # fmt: skip
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_bind_mounts_point_at_repository_files(compose: dict[str, Any]) -> None:
    seen = set()
    for name, service in compose["services"].items():
        for source, target in bind_mounts(service):
            seen.add(source)
            assert source.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            if source in MADE_ON_SERVER or source in GRAFANA_DIRS:
                continue
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    # The site broker's ACL is used unchanged, and Grafana gets both directories.
    assert (REPO / "deploy" / "mosquitto" / "acl") in seen
    assert seen >= GRAFANA_DIRS


def test_grafana_mounts(compose: dict[str, Any]) -> None:
    mounts = dict(bind_mounts(compose["services"]["grafana"]))
    assert mounts[REPO / "deploy" / "grafana" / "provisioning"] == "/etc/grafana/provisioning"
    dashboards = mounts[REPO / "deploy" / "grafana" / "dashboards"]
    assert dashboards == "/var/lib/grafana/dashboards/dustgate"
    # The dashboard provider (owned by the Grafana part) reads where we mount.
    provider = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "dustgate.yaml"
    if provider.exists():
        paths = [p["options"]["path"] for p in yaml.safe_load(provider.read_text())["providers"]]
        assert dashboards in paths
    env = compose["services"]["grafana"]["environment"]
    assert env["DUSTGATE_INFLUX_URL"] == "http://influxdb:8086"
    assert (
        env["DUSTGATE_INFLUX_DB"] == compose["services"]["influxdb"]["environment"]["INFLUXDB_DB"]
    )


def test_rules_image_builds_from_this_repository(compose: dict[str, Any]) -> None:
    build = compose["services"]["rules"]["build"]
    context = (CENTRAL / build["context"]).resolve()
    assert context == REPO
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY"):
            sources = line.split()[1:-1]
            for source in sources:
                assert (context / source).exists(), f"Dockerfile copies missing {source}"
    # The engine starts only after its config passes `dustgate check`.
    command = " ".join(compose["services"]["rules"]["command"])
    assert "dustgate check /etc/dustgate/rules.yaml && exec dustgate rules" in command


def test_dockerignore_keeps_the_package(compose: dict[str, Any]) -> None:
    patterns = [
        line.strip()
        for line in (CENTRAL / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # nothing by default (not the .venv, not .git) ...
    # ... except what the Dockerfile copies.
    for needed in ("!pyproject.toml", "!README.md", "!gateway/", "!drivers/", "!rules/"):
        assert needed in patterns


def test_only_the_tls_broker_and_grafana_face_the_network(compose: dict[str, Any]) -> None:
    public = set()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            port = str(port)
            if not port.startswith("127.0.0.1:"):
                public.add((name, port))
    assert public == {("mosquitto", "8883:8883"), ("grafana", "3000:3000")}


def test_secrets_are_required_not_defaulted(compose: dict[str, Any]) -> None:
    grafana_env = compose["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    rules_env = compose["services"]["rules"]["environment"]
    assert rules_env["DUSTGATE_MQTT_PASSWORD"].startswith("${DUSTGATE_MQTT_PASSWORD:?")
    console_env = compose["services"]["console"]["environment"]
    assert console_env["DUSTGATE_CONSOLE_MQTT_PASSWORD"].startswith(
        "${DUSTGATE_CONSOLE_MQTT_PASSWORD:?"
    )


def test_console_runs_from_the_engines_image_and_shares_its_rules_file(
    compose: dict[str, Any],
) -> None:
    console, rules = compose["services"]["console"], compose["services"]["rules"]
    assert console["image"] == rules["image"]
    command = " ".join(console["command"])
    assert "dustgate check /etc/dustgate/console.yaml && exec dustgate console" in command
    # the engine reads rules.yaml where the console writes it
    assert (CENTRAL / "config", "/etc/dustgate") in bind_mounts(console)
    assert ("./config:/etc/dustgate:ro") in rules["volumes"]
    assert console["ports"] == ["127.0.0.1:8480:8480"]


def test_documented_container_console_config_passes_check(tmp_path: Path) -> None:
    """The console.yaml of config/README.md, as the container would read it."""
    readme = (CENTRAL / "config" / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    console = next((b for b in blocks if "rules_file:" in b), None)
    assert console, "config/README.md lost its console.yaml snippet"
    (tmp_path / "console.yaml").write_text(console)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(tmp_path / "console.yaml")],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok (console config)" in proc.stdout
    snippet = yaml.safe_load(console)
    assert snippet["mqtt"]["username"] == "dustgate-console"  # the ACL's least-privilege user
    assert snippet["console"]["secure_cookies"] is True


def conf_lines(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_central_broker_keeps_the_site_brokers_auth_rules() -> None:
    site = conf_lines(REPO / "deploy" / "mosquitto" / "mosquitto.conf")
    central = conf_lines(CENTRAL / "mosquitto" / "mosquitto.conf")
    for setting in ("per_listener_settings false", "allow_anonymous false"):
        assert setting in site and setting in central
    assert "acl_file /mosquitto/config/acl" in central
    assert "password_file /mosquitto/config/passwd" in central
    # Every mosquitto path in the central config is one the compose file mounts.
    mounted = {
        target
        for _, target in bind_mounts(yaml.safe_load(COMPOSE.read_text())["services"]["mosquitto"])
    }
    for line in central:
        for path in re.findall(r"/mosquitto/config/\S+", line):
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted), path


def test_documented_container_rules_config_passes_check(tmp_path: Path) -> None:
    """examples/rules.yaml with the settings config/README.md tells the operator to change."""
    example = REPO / "examples" / "rules.yaml"
    if not example.exists():
        pytest.skip("examples/rules.yaml not written yet")
    readme = (CENTRAL / "config" / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert block, "config/README.md lost its rules.yaml snippet"
    snippet = yaml.safe_load(block.group(1))
    assert snippet["mqtt"]["host"] == "mosquitto"  # the compose service names
    assert snippet["influx"]["url"] == "http://influxdb:8086"
    config = yaml.safe_load(example.read_text())
    config.update(snippet)
    target = tmp_path / "rules.yaml"
    target.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "DUSTGATE_MQTT_PASSWORD": "from-compose-env"},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_k8s_statefulset_runs_one_partition_per_pod() -> None:
    """Pod K of the StatefulSet runs `dustgate rules --partition K/N`, N = replicas,
    each with its own state volume and no root."""
    sts = yaml.safe_load((CENTRAL / "k8s" / "rules-statefulset.yaml").read_text())
    assert sts["kind"] == "StatefulSet"
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["rules", "--config", "/etc/dustgate/rules.yaml"]
    assert args[args.index("--partition") + 1] == "$(POD_INDEX)/$(DUSTGATE_PARTITIONS)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert int(env["DUSTGATE_PARTITIONS"]["value"]) == spec["replicas"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [v["metadata"]["name"] for v in spec["volumeClaimTemplates"]] == ["state"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        "/etc/dustgate",
        "/var/lib/dustgate-rules",
    }
    # every option it passes exists
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "rules", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    assert all(a in proc.stdout for a in args if a.startswith("--"))
