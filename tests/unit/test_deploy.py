"""The container and the manifests in deploy/: they cannot run here, so their
syntax and their agreement with the CLI and the settings are checked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from outbox_worker.cli import main
from outbox_worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            assert {"apiVersion", "kind"} <= set(doc), f"{path.name}: apiVersion and kind are required"
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], f"{path.name}: metadata.name is required"
            objects[doc["kind"]] = doc
    return objects


def compose() -> dict[str, Any]:
    doc = load_all(DEPLOY / "compose.yaml")[0]
    assert isinstance(doc, dict)
    return doc


def containers() -> list[dict[str, Any]]:
    objects = k8s_objects()
    found = []
    for kind in ("Deployment", "Job"):
        found += objects[kind]["spec"]["template"]["spec"]["containers"]
    return found


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())  # type: ignore[misc]
    return env


def outbox_env() -> list[tuple[str, str, str | None]]:
    """(where, variable, literal value or None) for every OUTBOX_* variable deploy/ and the image set."""
    found: list[tuple[str, str, str | None]] = []
    for service, spec in compose()["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            found.append((f"compose {service}", name, str(value)))
    for container in containers():
        for var in container.get("env", []):
            found.append((f"k8s {container['name']}", var["name"], var.get("value")))
    found += [("Dockerfile", k, v) for k, v in dockerfile_env().items()]
    return [f for f in found if f[1].startswith("OUTBOX_")]


def commands_run() -> list[tuple[str, list[str]]]:
    found = [
        (f"compose {s}", spec["command"]) for s, spec in compose()["services"].items() if "command" in spec
    ]
    found += [(f"k8s {c['name']}", c["args"]) for c in containers()]
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd, "the Dockerfile has an exec-form CMD"
    found.append(("Dockerfile CMD", json.loads(cmd.group(1))))
    return found


def seconds(text: str | int) -> float:
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_every_outbox_variable_is_a_real_setting_with_a_valid_value() -> None:
    found = outbox_env()
    assert {"OUTBOX_DATABASE_URL", "OUTBOX_SHUTDOWN_GRACE", "OUTBOX_METRICS_PORT"} <= {f[1] for f in found}
    for where, name, value in found:
        field = name.removeprefix("OUTBOX_").lower()
        assert field in Settings.model_fields, f"{where}: {name} is not a setting"
        if value is not None:
            Settings.model_validate({field: value})  # raises if the value would be refused


def test_every_command_they_run_is_a_real_cli_command() -> None:
    for where, argv in commands_run():
        assert argv[0] in main.commands, f"{where}: `outbox-worker {argv[0]}` is not a command"
        command = main.commands[argv[0]]
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for arg in argv[1:]:
            if arg.startswith("-"):
                assert arg.split("=")[0] in known, f"{where}: {arg} is not an option of {argv[0]}"


def test_dockerfile_is_slim_non_root_and_probes_healthz() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "-slim" in text  # multi-stage, slim runtime
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["outbox-worker"]' in text
    default_port = Settings.model_fields["metrics_port"].default
    assert f"EXPOSE {default_port}" in text
    healthcheck = next(line for line in text.splitlines() if line.lstrip().startswith('CMD ["python"'))
    code = json.loads(healthcheck.strip().removeprefix("CMD "))[2]
    assert "/healthz" in code and "OUTBOX_METRICS_PORT" in code and str(default_port) in code
    compile(code, "healthcheck", "exec")


def test_compose_runs_postgres_a_one_shot_migrate_and_replicas() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", "worker"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 2
    grace = float(services["worker"]["environment"]["OUTBOX_SHUTDOWN_GRACE"])
    assert seconds(services["worker"]["stop_grace_period"]) > grace


def test_kubernetes_manifests() -> None:
    objects = k8s_objects()
    assert {"Deployment", "Job", "PodDisruptionBudget", "Secret", "Kustomization"} <= set(objects)
    listed = set(objects["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    env = {v["name"]: v.get("value") for v in worker["env"]}
    port = int(env.get("OUTBOX_METRICS_PORT") or Settings.model_fields["metrics_port"].default)
    assert {"name": "metrics", "containerPort": port} in worker["ports"]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["resources"]["requests"] and worker["resources"]["limits"]
    grace = float(env.get("OUTBOX_SHUTDOWN_GRACE") or Settings.model_fields["shutdown_grace"].default)
    assert pod["terminationGracePeriodSeconds"] > grace
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    pdb = objects["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]

    job = objects["Job"]
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    secret_refs = {
        v["valueFrom"]["secretKeyRef"]["name"]
        for c in (worker, migrate)
        for v in c["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert secret_refs == {objects["Secret"]["metadata"]["name"]}


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_every_manifest_parses(path: str) -> None:
    assert load_all(K8S / path)
