"""The deployment files are valid and consistent with the code they deploy (no Docker engine here, so
this is what can be checked: structure, references, and that every command they run exists)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud.cli import COMMANDS as CLOUD_COMMANDS

pytestmark = pytest.mark.unit
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_compose_services_are_complete_and_run_real_commands() -> None:
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {"timescaledb", "mosquitto", "migrate", "ingest-1", "ingest-2", "scheduler", "api"} <= set(services)
    for name in ("timescaledb", "mosquitto", "api"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert set(compose["volumes"]) >= {"pgdata", "mqttdata"}
    for name, service in services.items():
        command = service.get("command")
        if command and command[0] == "rpm-cloud":
            assert command[1] in CLOUD_COMMANDS, f"{name} runs an unknown command {command[1]!r}"
    for volume in services["mosquitto"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./mosquitto/"):
            assert (DEPLOY / source).exists() or source.endswith("passwd"), f"missing {source}"
    assert (DEPLOY / "Dockerfile").exists()


def test_kubernetes_manifests_are_listed_and_well_formed() -> None:
    kustomization = load_all(DEPLOY / "k8s" / "kustomization.yaml")[0]
    kinds = []
    for resource in kustomization["resources"]:
        for doc in load_all(DEPLOY / "k8s" / resource):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), resource
            kinds.append(doc["kind"])
            if doc["kind"] in ("Deployment", "Job"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    assert container["command"][0] == "rpm-cloud"
                    assert container["command"][1] in CLOUD_COMMANDS
    assert {"Deployment", "HorizontalPodAutoscaler", "Service", "Job", "ConfigMap"} <= set(kinds)


def test_gateway_unit_and_install_script_name_what_exists() -> None:
    unit = (DEPLOY / "systemd" / "rpm-gateway.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "rpm-gateway run --config" in exec_start
    assert "Restart=" in unit and "User=rpm-gateway" in unit
    script = DEPLOY / "gateway" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    for needed in ("deploy/gateway/gateway.example.toml", "deploy/systemd/rpm-gateway.service", "deploy/udev/"):
        assert needed in script.read_text()
        assert (DEPLOY.parent / needed).exists()


def test_the_example_gateway_config_loads() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from gateway.config import load_config; load_config(sys.argv[1])",
         str(DEPLOY / "gateway" / "gateway.example.toml")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_env_variables_in_deploy_files_are_settings_the_cloud_reads() -> None:
    from cloud.settings import CloudSettings

    known = {f"RPM_{name.upper()}" for name in CloudSettings.model_fields}
    compose = (DEPLOY / "docker-compose.yml").read_text() + (DEPLOY / "k8s" / "config.yaml").read_text()
    used = {word.strip(":") for word in shlex.split(compose.replace("{", " ").replace("}", " "))
            if word.startswith("RPM_") and word.endswith(":")}
    assert used and used <= known, used - known


def test_compose_gives_gateways_the_forced_id_listener_and_services_their_own() -> None:
    from urllib.parse import urlsplit

    from tests.deploy.deploy_broker import EXTERNAL_PORT, INTERNAL_PORT, parse_listeners

    general, listeners = parse_listeners((DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    assert general.get("per_listener_settings") == "true", "each listener needs its own password file"
    by_port = {listener.port: listener.options for listener in listeners}
    external, internal = by_port[EXTERNAL_PORT], by_port[INTERNAL_PORT]
    assert external.get("use_username_as_clientid") == "true"
    assert internal.get("use_username_as_clientid", "false") == "false"
    for options in by_port.values():
        assert options.get("allow_anonymous") == "false" and options.get("acl_file")
    assert external["password_file"] != internal["password_file"], "gateway credentials must not open 8884"
    assert all(o["password_file"] != external["password_file"] for p, o in by_port.items() if p != EXTERNAL_PORT)

    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    mosquitto = services["mosquitto"]
    mounted = {volume.split(":")[1] for volume in mosquitto["volumes"]}
    for options in by_port.values():
        assert {options["password_file"], options["acl_file"]} <= mounted
    assert [port.split(":")[-1] for port in mosquitto["ports"]] == [str(EXTERNAL_PORT)], "only 8883 is public"
    ingest_ids = []
    for name, service in services.items():
        url = service.get("environment", {}).get("RPM_MQTT_URL")
        if url:
            assert urlsplit(url).port == INTERNAL_PORT, f"{name} must use the services listener"
        command = service.get("command") or []
        if command[:2] == ["rpm-cloud", "ingest"]:
            assert "RPM_MQTT_USERNAME" in service["environment"]
            ingest_ids.append(command[command.index("--client-id") + 1])
    assert len(ingest_ids) >= 2 and len(set(ingest_ids)) == len(ingest_ids), "ingest client ids must be unique"
