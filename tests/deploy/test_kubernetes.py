"""deploy/kubernetes/ and the Dockerfile, which cannot be run here: every manifest is valid
against the Kubernetes schemas (kubernetes-validate's bundled copies, strict: no unknown
field), and what they say agrees with the service -- the probes are routes it has, the
config it mounts loads, the grace period outlasts its drain, the image runs the command the
tests run, as a non-root user, with its files where the manifests expect them."""
from __future__ import annotations

import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.cluster.launch import DRAIN_MARGIN_S
from service.config import load_settings
from service.web.routes import TABLE

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"
PRESTOP_S = 5


def documents() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict:
    (found,) = [d for d in documents() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_kinds_a_deployment_needs_are_there():
    assert {d["kind"] for d in documents()} >= {
        "Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
        "PodDisruptionBudget"}


def container() -> dict:
    (only,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def test_the_probes_are_routes_of_the_service():
    probes = {name: container()[name]["httpGet"]["path"]
              for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"] == "/readyz" and probes["livenessProbe"] == "/healthz"
    for path in probes.values():
        assert TABLE.match(path), path


def test_the_mounted_config_loads_and_serves_on_the_container_port(tmp_path):
    config = tmp_path / "service.conf"
    config.write_text(by_kind("ConfigMap")["data"]["service.conf"])
    settings = load_settings(config)
    port = settings.cherrypy["server.socket_port"]
    assert {"containerPort": port, "name": "http"} in container()["ports"]
    assert by_kind("Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert [m.name for m in settings.models] == ["digits-cnn", "digits-rnn"]


def test_the_pod_runs_read_only_as_a_user_with_var_on_an_empty_dir():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["var"] == "/app/var" and "emptyDir" in volumes["var"]
    assert "emptyDir" in volumes["tmp"] and mounts["tmp"] == "/tmp"


def test_the_grace_period_outlasts_the_drain():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    settings = load_settings(None)
    shutdown = settings.cherrypy["server.shutdown_timeout"]
    assert container()["lifecycle"]["preStop"]["sleep"]["seconds"] == PRESTOP_S
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_S + shutdown + DRAIN_MARGIN_S + 5


def test_the_image_runs_the_tests_command_as_a_user_with_a_healthcheck():
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    cmd = [line for line in lines if line.startswith("CMD ")][-1]  # (HEALTHCHECK has one too)
    assert cmd.startswith('CMD ["python", "-m", "service", "serve"')
    assert container()["command"][:4] == ["python", "-m", "service", "serve"]
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    user = next(line for line in lines if line.startswith("USER "))
    assert shlex.split(user)[1] not in ("root", "0")
    assert "WORKDIR /app" in lines  # where the manifests mount var/
    for needed in ("service/", "graphs/", "labels/", "templates/", "static/", "conf/"):
        assert any(line.startswith(f"COPY {needed}") for line in lines), needed
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)
