"""deploy/k8s, checked without a cluster: each overlay rendered with ``kubectl kustomize``, every object validated
against the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown field fails), then the wiring the
deployment relies on (docs/deploy.md): probes, the headless Service the gateways resolve, Redis, autoscalers and
their custom metrics, disruption budgets, selectors, references, Ingress timeouts, images, resources; and what it
exposes: who may connect to what (NetworkPolicies), required Secrets, Redis's password, Triton's restricted APIs,
the gateway's Host allow-list and trusted proxies, unprivileged read-only pods with bounded disk.

The ServiceMonitors (a custom resource no Kubernetes schema covers) and the Prometheus alert rules are checked
for structure and for naming only metrics that exist.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from docker_helpers import TRITON_PROTOCOLS, dockerfile_stages, gateway_triton_protocols, restricted_protocols

from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.triton.server import ADMIN_APIS

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu-demo")
# The oldest Kubernetes we claim (autoscaling/v2 and policy/v1 are GA since 1.23 and 1.21; nothing newer is
# used) and the newest the pinned kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.27.0", "1.37.0")
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (.ci/run installs Debian's kubernetes-client for it)"
)

# Our images and the docker/Dockerfile stage each is built from.
IMAGE_STAGES = {
    "lipsync-triton-export": "export",
    "lipsync-triton-gateway": "gateway",
    "lipsync-triton-cpu": "triton-cpu",
}
# Secrets the operator provides (docs/deploy.md says how to create each): referenced, never rendered.
EXTERNAL_SECRETS = {"lipsync-auth", "lipsync-avatar-signing", "lipsync-redis", "lipsync-triton-admin", "lipsync-tls"}
# Namespaces allowed in by the NetworkPolicies (matched by kubernetes.io/metadata.name; docs/deploy.md).
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
# Who may open a connection to each workload's pods, and to which port: ("namespace", name, port) for every pod of a
# namespace, ("pods", workload, port) for the pods of a workload of the same namespace. Nothing else.
EXPECTED_PEERS: dict[str, set[tuple[str, str, int]]] = {
    "gateway": {("namespace", INGRESS_NAMESPACE, 8000), ("namespace", MONITORING_NAMESPACE, 8000)},
    "triton": {("pods", "gateway", 8001), ("namespace", MONITORING_NAMESPACE, 8002)},
    "redis": {("pods", "gateway", 6379)},
    "export-models": set(),
}
# What each container writes, besides its logs: each must be a volume, the root filesystem being read-only.
WRITABLE_PATHS = {
    ("gateway", "gateway"): {"/tmp"},
    ("triton", "triton"): {"/tmp", "/dev/shm"},
    ("export-models", "export"): {"/tmp", "/checkpoints", "/artifacts", "/models"},
    ("redis", "redis"): {"/data"},
}
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
# Triton 2.51's metric families (read from the embedded server; the nv_gpu_* ones appear with a GPU only).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
}
KUBE_STATE_METRICS = {
    "kube_deployment_status_replicas_available",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}


def gateway_metrics() -> set[str]:
    """The series names the gateway exports (gateway/metrics.py), with Prometheus's suffixes."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes.get(family.type, ("",))
    }


def kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass(frozen=True)
class Render:
    name: str
    objects: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.all(kind)}

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]

    def pod_labels(self) -> list[tuple[str, dict[str, str]]]:
        return [(w["metadata"]["name"], w["spec"]["template"]["metadata"]["labels"]) for w in self.workloads()]

    def configmap_data(self, name: str) -> dict[str, str]:
        data: dict[str, str] = self.get("ConfigMap", name)["data"]
        return data


@functools.cache
def rendered(overlay: str) -> Render:
    return Render(overlay, kustomize(K8S / "overlays" / overlay))


# Ids `overlays/gpu`, not `gpu`: tests/conftest.py skips every test with a `gpu` keyword on machines without one.
@pytest.fixture(params=OVERLAYS, ids=lambda overlay: f"overlays/{overlay}")
def render(request: pytest.FixtureRequest) -> Render:
    return rendered(request.param)


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any], render: Render) -> dict[str, str]:
    """A container's environment: envFrom ConfigMaps first, then env (which wins), values as written."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(render.configmap_data(source["configMapRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(number)


def env_ref(c: dict[str, Any], name: str) -> dict[str, Any]:
    """The secretKeyRef (or other valueFrom) of one of a container's env variables."""
    (var,) = [v for v in c.get("env", []) if v["name"] == name]
    ref: dict[str, Any] = var["valueFrom"]
    return ref


_QUANTITY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str) -> float:
    """A Kubernetes quantity (``256Mi``, ``2Gi``, ``1``) in bytes or units."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMG]|[KMGT]i)?", str(text))
    assert match is not None, f"not a quantity: {text}"
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2) or ""]


def allowed_peers(render: Render, workload: dict[str, Any]) -> set[tuple[str, str, int | str]]:
    """Every (kind, who, port) the NetworkPolicies let connect to a workload's pods (see EXPECTED_PEERS); port "*"
    for a rule without ports, ("anyone", "", port) for a rule without sources."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    named = {
        p["name"]: p["containerPort"]
        for c in workload["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    peers: set[tuple[str, str, int | str]] = set()
    for policy in render.all("NetworkPolicy"):
        spec = policy["spec"]
        assert "matchExpressions" not in spec["podSelector"], policy["metadata"]["name"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        if not matches(spec["podSelector"].get("matchLabels", {}), labels):
            continue
        for rule in spec.get("ingress", []):
            ports: list[int | str] = ["*"]
            if rule.get("ports"):
                assert all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"])
                ports = [p["port"] if isinstance(p["port"], int) else named[p["port"]] for p in rule["ports"]]
            sources: list[tuple[str, str]] = []
            for peer in rule.get("from") or [{}]:
                assert "ipBlock" not in peer, f"{policy['metadata']['name']}: an address block"
                namespaces = peer.get("namespaceSelector")
                pods = peer.get("podSelector")
                if namespaces is None and pods is None:
                    sources.append(("anyone", ""))
                elif pods is None:
                    # A whole namespace, named by the label Kubernetes puts on every namespace.
                    assert set(namespaces) == {"matchLabels"}, policy["metadata"]["name"]
                    assert set(namespaces["matchLabels"]) == {"kubernetes.io/metadata.name"}, namespaces
                    sources.append(("namespace", namespaces["matchLabels"]["kubernetes.io/metadata.name"]))
                else:
                    assert namespaces is None, f"{policy['metadata']['name']}: pods of other namespaces"
                    selected = [name for name, pod in render.pod_labels() if matches(pods["matchLabels"], pod)]
                    assert selected, f"{policy['metadata']['name']}: its podSelector selects no pods"
                    sources += [("pods", name) for name in selected]
            peers |= {(kind, who, port) for kind, who in sources for port in ports}
    return peers


# --------------------------------------------------------------------------------------------- rendering


def test_overlay_renders_the_whole_deployment_in_its_namespace(render: Render) -> None:
    (namespace,) = render.all("Namespace")
    ns = namespace["metadata"]["name"]
    expected = {
        ("Job", "export-models"),
        ("Deployment", "triton"),
        ("Deployment", "gateway"),
        ("Deployment", "redis"),
        ("Service", "triton-headless"),
        ("Service", "triton-metrics"),
        ("Service", "gateway"),
        ("Service", "redis"),
        ("Ingress", "gateway"),
        ("HorizontalPodAutoscaler", "triton"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "triton"),
        ("PodDisruptionBudget", "gateway"),
        ("PersistentVolumeClaim", "model-repository"),
    }
    present = {(o["kind"], o["metadata"]["name"]) for o in render.objects}
    assert expected <= present, expected - present
    for obj in render.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == ns, f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(render: Render, version: str) -> None:
    for obj in render.objects:
        label = f"{render.name}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{label} is invalid for Kubernetes {version} at {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{label}: {error.message}")


def test_the_validator_is_strict_and_offline() -> None:
    # The schemas ship in the package (no network): a misspelt field deep in a pod template must fail.
    deployment = rendered("gpu").get("Deployment", "gateway")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------------------------- Triton


def test_triton_probes_use_tritons_health_endpoints(render: Render) -> None:
    triton = container(render.get("Deployment", "triton"), "triton")
    probes = {kind: triton[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in probes.values():
        assert port_number(triton, probe["httpGet"]["port"]) == 8000  # Triton's HTTP port
    # The first start builds TensorRT engines before the ports open: at least 20 minutes of grace.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_gpu_overlay_puts_triton_on_a_gpu_and_keeps_its_engines() -> None:
    render = rendered("gpu")
    triton = render.get("Deployment", "triton")
    server = container(triton, "triton")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert server["image"] == compose["services"]["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    resources = server["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in triton["spec"]["template"]["spec"]["tolerations"])
    # The engine cache path written into the configs (docker/export.sh --trt-cache) is a persistent volume.
    cache = re.search(r"--trt-cache (\S+)", (REPO_ROOT / "docker" / "export.sh").read_text())
    assert cache is not None
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[cache.group(1)]]
    # Gateways, Redis and the export need no GPU.
    for workload in render.workloads():
        if workload["metadata"]["name"] != "triton":
            assert "nvidia.com/gpu" not in yaml.safe_dump(workload)


def test_cpu_demo_runs_the_embedded_tritonserver_without_a_gpu() -> None:
    render = rendered("cpu-demo")
    assert "nvidia.com/gpu" not in yaml.safe_dump(render.objects)
    server = container(render.get("Deployment", "triton"), "triton")
    assert server["image"].split(":")[0] == "lipsync-triton-cpu"
    command = server["command"]
    assert command[:3] == ["python", "-m", "gateway.triton.server"]
    assert "--address=0.0.0.0" in command
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    for name in ("http", "grpc", "metrics"):
        assert f"--{name}-port={ports[name]}" in command
    # The flags exist in the launcher, and the image's default command agrees.
    source = (REPO_ROOT / "gateway" / "triton" / "server.py").read_text()
    assert all(f'"{flag}"' in source for flag in ("--address", "--http-port", "--ready-timeout-s"))
    assert '"gateway.triton.server", "/models", "--address", "0.0.0.0"' in dockerfile_stages()["triton-cpu"]
    # The export writes the `cpu` repository (Python backend) the embedded server runs, from random weights.
    export = container(render.get("Job", "export-models"), "export")
    script = " ".join(export["args"])
    assert "repository --target cpu" in script and "--reduced" in script
    assert env_of(export, render)["LIPSYNC_DEMO"] == "1"
    assert env_of(container(render.get("Deployment", "gateway"), "gateway"), render)["LIPSYNC_DEMO"] == "1"


def test_export_job_writes_the_repository_triton_reads(render: Render) -> None:
    job = render.get("Job", "export-models")
    triton = render.get("Deployment", "triton")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    def claim_at(workload: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, bool]:
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == path]
        (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        return volume["persistentVolumeClaim"]["claimName"], bool(mount.get("readOnly"))

    assert claim_at(job, container(job, "export"), "/models") == ("model-repository", False)
    server = container(triton, "triton")
    repository = next(a for a in server["command"] if "/models" in a)
    assert repository.endswith("/models")
    assert claim_at(triton, server, "/models") == ("model-repository", True)
    # Triton starts once the export has finished (repository.json is written last).
    (wait,) = triton["spec"]["template"]["spec"]["initContainers"]
    assert "/models/repository.json" in " ".join(wait["command"])
    if render.name == "gpu":
        assert "/app/docker/export.sh" in " ".join(container(job, "export")["args"])
        assert env_of(container(job, "export"), render)["LIPSYNC_DEMO"] == "0"


# --------------------------------------------------------------------------------------------- gateway


def test_gateway_resolves_tritons_through_the_headless_service(render: Render) -> None:
    headless = render.get("Service", "triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)  # only ready pods are resolved
    triton = render.get("Deployment", "triton")
    assert matches(headless["spec"]["selector"], triton["spec"]["template"]["metadata"]["labels"])
    grpc = next(p for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert port_number(container(triton, "triton"), grpc["targetPort"]) == 8001

    gateway = container(render.get("Deployment", "gateway"), "gateway")
    env = gateway["env"]
    names = [var["name"] for var in env]
    (pod_namespace,) = [var for var in env if var["name"] == "POD_NAMESPACE"]
    assert pod_namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Kubernetes expands $(POD_NAMESPACE) only from variables defined before it.
    assert names.index("POD_NAMESPACE") < names.index("LIPSYNC_TRITON_URL")
    url = env_of(gateway, render)["LIPSYNC_TRITON_URL"]
    assert url == f"dns://triton-headless.$(POD_NAMESPACE).svc.cluster.local:{grpc['port']}"


def test_gateway_shares_avatars_through_the_redis_service(render: Render) -> None:
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    url = urlsplit(env_of(gateway, render)["LIPSYNC_REDIS_URL"])
    assert url.scheme == "redis"
    service = render.get("Service", url.hostname or "")
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    redis = render.get("Deployment", "redis")
    assert matches(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    server = container(redis, "redis")
    assert server["image"].startswith("redis:7.")
    args = server["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert "--maxmemory" in args and args[args.index("--save") + 1] == ""  # a cache: no snapshots


def test_redis_asks_for_the_password_the_gateways_send(render: Render) -> None:
    redis = container(render.get("Deployment", "redis"), "redis")
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    # Redis takes the password from the Secret, by env expansion in its arguments.
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    secret = env_ref(redis, "REDIS_PASSWORD")["secretKeyRef"]
    assert not secret.get("optional", False)  # missing, $(REDIS_PASSWORD) would be the literal password
    # The gateways' URL carries the same Secret's value, expanded from a variable defined before it.
    assert env_ref(gateway, "REDIS_PASSWORD")["secretKeyRef"] == secret
    names = [var["name"] for var in gateway["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("LIPSYNC_REDIS_URL")
    url = urlsplit(env_of(gateway, render)["LIPSYNC_REDIS_URL"])
    assert not url.username and url.password == "$(REDIS_PASSWORD)"
    # The liveness probe authenticates too (redis-cli reads REDISCLI_AUTH), and fails on a refusal.
    assert env_ref(redis, "REDISCLI_AUTH")["secretKeyRef"] == secret
    probe = " ".join(redis["livenessProbe"]["exec"]["command"])
    assert "redis-cli ping" in probe and "PONG" in probe


def test_gateway_runs_the_images_command_with_its_settings(render: Render) -> None:
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    assert "command" not in gateway and "args" not in gateway  # the Dockerfile's CMD, as in docker-compose
    stage = dockerfile_stages()["gateway"]
    assert 'CMD ["python", "-m", "gateway", "serve"]' in stage and "LIPSYNC_PORT=8000" in stage
    assert port_number(gateway, "http") == 8000
    env = env_of(gateway, render)
    assert env["LIPSYNC_HOST"] == "0.0.0.0" and env["LIPSYNC_PORT"] == "8000"
    assert int(env["LIPSYNC_MAX_SESSIONS"]) >= 1
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness and the drain run gateway/ops/probe.py, which exists and takes these commands.
    assert gateway["readinessProbe"]["exec"]["command"] == ["python", "-m", "gateway.ops.probe", "ready"]
    drain = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:4] == ["python", "-m", "gateway.ops.probe", "drain"]
    max_wait = float(drain[drain.index("--max-wait-s") + 1])
    grace = render.get("Deployment", "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert max_wait >= float(env["LIPSYNC_MAX_SESSION_SECONDS"]) and grace > max_wait
    assert (REPO_ROOT / "gateway" / "ops" / "probe.py").is_file()


def test_ingress_keeps_websockets_open_for_a_whole_session(render: Render) -> None:
    ingress = render.get("Ingress", "gateway")
    annotations = ingress["metadata"]["annotations"]
    gateway = render.get("Deployment", "gateway")
    session_s = float(env_of(container(gateway, "gateway"), render)["LIPSYNC_MAX_SESSION_SECONDS"])
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) >= max(3600, session_s), key
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    service = render.get("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert matches(service["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])


# --------------------------------------------------------------------------------------------- scaling


def adapter_rules() -> dict[str, Any]:
    objects = kustomize(K8S / "monitoring")
    (configmap,) = objects
    values = yaml.safe_load((K8S / "monitoring" / "adapter-values.yaml").read_text())
    assert configmap["metadata"]["name"] == values["rules"]["existing"]
    loaded: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return loaded


def test_autoscalers_target_the_right_deployments_on_the_right_metrics(render: Render) -> None:
    served = {rule["name"]["as"] for rule in adapter_rules()["rules"]}
    expected = {"triton": "triton_queue_us_per_request", "gateway": "lipsync_active_sessions"}
    assert render.names("HorizontalPodAutoscaler") == set(expected)
    for name, metric in expected.items():
        hpa = render.get("HorizontalPodAutoscaler", name)
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", name)
        render.get("Deployment", name)
        (spec,) = hpa["spec"]["metrics"]
        assert spec["type"] == "Pods" and spec["pods"]["metric"]["name"] == metric
        assert metric in served, f"prometheus-adapter serves no {metric}"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Gateways scale before they are full.
    gateway = render.get("HorizontalPodAutoscaler", "gateway")["spec"]["metrics"][0]["pods"]["target"]
    max_sessions = env_of(container(render.get("Deployment", "gateway"), "gateway"), render)["LIPSYNC_MAX_SESSIONS"]
    assert gateway["type"] == "AverageValue" and 0 < float(gateway["averageValue"]) < int(max_sessions)


def test_adapter_rules_read_metrics_that_exist() -> None:
    objects = kustomize(K8S / "monitoring")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    known = TRITON_METRICS | gateway_metrics()
    for rule in adapter_rules()["rules"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"])
        assert series is not None and series.group(1) in known
        assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
        assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
        used = set(re.findall(r"\b(?:nv|lipsync)_\w+", rule["metricsQuery"]))
        assert used <= known, used - known
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_disruption_budgets_cover_existing_pods(render: Render) -> None:
    for pdb in render.all("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        owners = [name for name, labels in render.pod_labels() if matches(selector, labels)]
        assert owners == [pdb["metadata"]["name"]], f"PDB {pdb['metadata']['name']} selects {owners}"
        assert "maxUnavailable" in pdb["spec"]  # a single replica can still be drained


# --------------------------------------------------------------------------------------------- consistency


def test_every_selector_matches_its_pods(render: Render) -> None:
    for workload in render.workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["kind"] != "Job":
            assert matches(workload["spec"]["selector"]["matchLabels"], labels), workload["metadata"]["name"]
        for constraint in workload["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert matches(constraint["labelSelector"]["matchLabels"], labels)
    for service in render.all("Service"):
        selected = [name for name, labels in render.pod_labels() if matches(service["spec"]["selector"], labels)]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        workload = next(w for w in render.workloads() if w["metadata"]["name"] == selected[0])
        ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"


def test_every_reference_resolves(render: Render) -> None:
    configmaps, secrets, claims = (
        render.names("ConfigMap"),
        render.names("Secret"),
        render.names("PersistentVolumeClaim"),
    )
    external_secrets: set[str] = set()

    def secret(name: str, optional: bool = False) -> None:
        # Nothing optional: a missing Secret stops the pod instead of starting it without its token or key.
        assert not optional, f"{render.name}: the Secret {name} is optional"
        if name in EXTERNAL_SECRETS:
            external_secrets.add(name)
        else:
            assert name in secrets, f"{render.name}: Secret {name} is not rendered"

    for workload in render.workloads():
        spec = workload["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "secret" in volume:
                secret(volume["secret"]["secretName"], volume["secret"].get("optional", False))
        mounted = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(spec):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounted, c["name"]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    secret(source["secretRef"]["name"], source["secretRef"].get("optional", False))
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    data = render.configmap_data(ref["configMapKeyRef"]["name"])
                    assert ref["configMapKeyRef"]["key"] in data
                if "secretKeyRef" in ref:
                    secret(ref["secretKeyRef"]["name"], ref["secretKeyRef"].get("optional", False))
    for ingress in render.all("Ingress"):
        for tls in ingress["spec"].get("tls", []):
            secret(tls["secretName"])
    # What is not rendered, the operator makes: docs/deploy.md must say how.
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for name in external_secrets:
        kind = "tls" if name == "lipsync-tls" else "generic"
        assert f"`{name}`" in docs and f"create secret {kind} {name} " in docs, name


def test_every_container_states_its_resources(render: Render) -> None:
    for workload in render.workloads():
        for c in containers(workload["spec"]["template"]["spec"]):
            resources = c.get("resources", {})
            label = f"{render.name}: {workload['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), label
            assert "memory" in resources.get("limits", {}), label


def test_our_images_are_built_by_the_dockerfile(render: Render) -> None:
    stages = dockerfile_stages()
    for workload in render.workloads():
        for c in containers(workload["spec"]["template"]["spec"]):
            repository = c["image"].rsplit(":", 1)[0] if ":" in c["image"].rsplit("/", 1)[-1] else c["image"]
            name = repository.rsplit("/", 1)[-1]
            if name.startswith("lipsync-triton"):
                assert IMAGE_STAGES[name] in stages, c["image"]
                assert ":" in c["image"].rsplit("/", 1)[-1], f"{c['image']}: the overlay sets no tag"


# --------------------------------------------------------------------------------------------- exposure


def test_network_policies_let_in_only_the_expected_peers(render: Render) -> None:
    # Deny by default: a policy selecting every pod of the namespace, with no rule.
    deny = [
        p
        for p in render.all("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and p["spec"].get("policyTypes") == ["Ingress"]
        and not p["spec"].get("ingress")
    ]
    assert deny, f"{render.name}: no default-deny ingress policy"
    # Every workload is listed (a new one must say who reaches it), and exactly its peers get in.
    assert {w["metadata"]["name"] for w in render.workloads()} == set(EXPECTED_PEERS)
    for workload in render.workloads():
        name = workload["metadata"]["name"]
        assert allowed_peers(render, workload) == EXPECTED_PEERS[name], f"{render.name}: {name}"


def test_network_policy_namespaces_are_documented() -> None:
    # The namespaces let in are the operator's to change (patching the policies that name them): the docs say which.
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    render = rendered("gpu")
    for policy in render.all("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    assert f"`{policy['metadata']['name']}`" in docs, policy["metadata"]["name"]
                    assert f"kubernetes.io/metadata.name: {namespace}" in docs, namespace


def test_every_pod_runs_unprivileged_on_a_read_only_root(render: Render) -> None:
    for workload in render.workloads():
        pod = workload["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        name = f"{render.name}: {workload['metadata']['name']}"
        assert pod_context.get("runAsNonRoot") is True, name
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
        for c in containers(pod):
            context = c.get("securityContext", {})
            label = f"{name}/{c['name']}"
            assert context.get("allowPrivilegeEscalation") is False, label
            assert context.get("capabilities") == {"drop": ["ALL"]}, label
            assert context.get("readOnlyRootFilesystem") is True, label
            assert not context.get("privileged"), label
            # By number: the kubelet cannot check runAsNonRoot against an image's user given by name.
            uid = context.get("runAsUser", pod_context.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, label


def test_what_a_container_writes_is_a_volume(render: Render) -> None:
    for (workload_name, container_name), paths in WRITABLE_PATHS.items():
        workload = next(w for w in render.workloads() if w["metadata"]["name"] == workload_name)
        c = container(workload, container_name)
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for path in paths:
            assert path in mounts and not mounts[path].get("readOnly"), f"{workload_name}/{container_name}: {path}"
            assert mounts[path]["name"] in volumes
        # HOME (caches) points at one of them.
        home = env_of(c, render).get("HOME")
        assert home is None or home in paths, f"{workload_name}/{container_name}: HOME={home}"
    for workload_name in ("triton", "export-models"):
        pod = next(w for w in render.workloads() if w["metadata"]["name"] == workload_name)["spec"]["template"]
        assert env_of(pod["spec"]["containers"][0], render).get("HOME") == "/tmp", workload_name


def test_every_container_bounds_its_disk(render: Render) -> None:
    for workload in render.workloads():
        pod = workload["spec"]["template"]["spec"]
        name = f"{render.name}: {workload['metadata']['name']}"
        limits = 0.0
        for c in containers(pod):
            resources = c.get("resources", {})
            request = quantity(resources.get("requests", {}).get("ephemeral-storage", "-"))
            limit = quantity(resources.get("limits", {}).get("ephemeral-storage", "-"))
            assert 0 < request <= limit, f"{name}/{c['name']}"
            if c in pod["containers"]:
                limits += limit
        # Disk-backed emptyDirs count against the pod's limit: each is bounded, and all of them fit in it, so a
        # full volume does not get the pod evicted. (Memory-backed ones count as memory.)
        disk = [
            v["emptyDir"] for v in pod.get("volumes", []) if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        ]
        assert all("sizeLimit" in v for v in disk), name
        assert sum(quantity(v["sizeLimit"]) for v in disk) < limits, name


def test_every_image_is_pinned(render: Render) -> None:
    for workload in render.workloads():
        for c in containers(workload["spec"]["template"]["spec"]):
            image = c["image"]
            if "@sha256:" in image:
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            # A release (major.minor at least), not a floating name: no `latest`, no bare `7`.
            assert re.match(r"\d+\.\d+", tag), f"{render.name}: {workload['metadata']['name']}/{c['name']}: {image}"


def test_gateway_requires_its_token_and_signing_key(render: Render) -> None:
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    env = env_of(gateway, render)
    token = env_ref(gateway, "LIPSYNC_AUTH_TOKEN")["secretKeyRef"]
    assert token["name"] in EXTERNAL_SECRETS and not token.get("optional", False)
    # Avatars go through Redis, so their records are signed: the key is required with LIPSYNC_REDIS_URL.
    assert "LIPSYNC_REDIS_URL" in env
    key = env_ref(gateway, "LIPSYNC_AVATAR_SIGNING_KEY")["secretKeyRef"]
    assert key["name"] in EXTERNAL_SECRETS and not key.get("optional", False)
    assert env.get("LIPSYNC_ALLOW_ANONYMOUS", "false").lower() in {"false", "0", ""}
    # No secret in a ConfigMap.
    for configmap in render.all("ConfigMap"):
        assert not {"LIPSYNC_AUTH_TOKEN", "LIPSYNC_AVATAR_SIGNING_KEY"} & set(configmap.get("data", {}))


def test_gateway_answers_to_the_ingress_host_behind_a_trusted_proxy(render: Render) -> None:
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    env = env_of(gateway, render)
    allowed = {host.strip() for host in env["LIPSYNC_ALLOWED_HOSTS"].split(",")}
    ingress = render.get("Ingress", "gateway")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    hosts |= {host for tls in ingress["spec"].get("tls", []) for host in tls["hosts"]}
    assert hosts and hosts <= allowed, f"{render.name}: the Ingress serves {hosts - allowed}, which the gateway refuses"
    # The kubelet's HTTP probes name an allowed host (by default they send the pod's address).
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "httpGet" in gateway.get(kind, {}):
            headers = {h["name"].lower(): h["value"] for h in gateway[kind]["httpGet"].get("httpHeaders", [])}
            assert headers.get("host") in LOOPBACK_HOSTS | allowed, kind
    # Clients are counted by the address the ingress controller forwards, not the controller's own. Trusting any
    # peer's X-Forwarded-For is only right while nothing but the controller (and Prometheus) can connect.
    trusted = {address.strip() for address in env["LIPSYNC_FORWARDED_ALLOW_IPS"].split(",")}
    if "*" in trusted:
        peers = allowed_peers(render, render.get("Deployment", "gateway"))
        assert {(kind, who) for kind, who, _ in peers} == {
            ("namespace", INGRESS_NAMESPACE),
            ("namespace", MONITORING_NAMESPACE),
        }


def test_the_manifests_set_only_settings_the_gateway_has(render: Render) -> None:
    fields = {f"LIPSYNC_{name.upper()}" for name in Settings.model_fields}
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    names = set(env_of(gateway, render)) | {var["name"] for var in gateway["env"]}
    unknown = {name for name in names if name.startswith("LIPSYNC_")} - fields
    assert not unknown, f"gateway/settings.py has no {unknown}"


def test_triton_restricts_every_api_the_gateway_does_not_call() -> None:
    # The gpu overlay runs NVIDIA's tritonserver with the flags themselves.
    triton = container(rendered("gpu").get("Deployment", "triton"), "triton")
    command = triton["command"]
    used = gateway_triton_protocols()
    open_protocols = used | {"health", "metadata"}  # health: the probes and the gateway's readiness checks
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        restricted = restricted_protocols(command, flag)
        assert set(restricted) == TRITON_PROTOCOLS - open_protocols, flag
        # One key, from a required Secret: unexpanded, `$(TRITON_ADMIN_KEY)` itself would be the key.
        assert set(restricted.values()) == {"triton-admin-key=$(TRITON_ADMIN_KEY)"}, flag
    secret = env_ref(triton, "TRITON_ADMIN_KEY")["secretKeyRef"]
    assert secret["name"] in EXTERNAL_SECRETS and not secret.get("optional", False)
    # The cpu-demo runs the embedded tritonserver's launcher: it restricts the same APIs, with the same Secret's
    # key, read from the environment.
    assert set(ADMIN_APIS) == TRITON_PROTOCOLS - open_protocols
    demo = container(rendered("cpu-demo").get("Deployment", "triton"), "triton")
    assert "--admin-key-env=TRITON_ADMIN_KEY" in demo["command"]
    assert env_ref(demo, "TRITON_ADMIN_KEY")["secretKeyRef"] == secret


def test_docs_say_what_is_exposed_and_what_to_set() -> None:
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    section = docs.partition("## What is exposed, and what an operator must set")[2].partition("\n## ")[0]
    assert section, "docs/deploy.md has no section on what is exposed"
    for needle in (
        "LIPSYNC_AUTH_TOKEN",
        "LIPSYNC_AVATAR_SIGNING_KEY",
        "LIPSYNC_ALLOWED_HOSTS",
        "LIPSYNC_FORWARDED_ALLOW_IPS",
        "LIPSYNC_PUBLISH",
        "16 characters",
        *sorted(EXTERNAL_SECRETS),
    ):
        assert needle in section, needle


# --------------------------------------------------------------------------------------------- monitoring


def test_servicemonitors_select_the_rendered_services() -> None:
    monitors = list(yaml.safe_load_all((K8S / "monitoring" / "servicemonitors.yaml").read_text()))
    render = rendered("gpu")
    assert {m["metadata"]["name"] for m in monitors} == {"triton", "gateway"}
    for monitor in monitors:
        assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
        selected = [
            s
            for s in render.all("Service")
            if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(selected)} Services"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    # The gateway's /metrics asks for the access token: the ServiceMonitor sends the gateways' own.
    (gateway_monitor,) = [m for m in monitors if m["metadata"]["name"] == "gateway"]
    authorization = gateway_monitor["spec"]["endpoints"][0]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    token = env_ref(container(render.get("Deployment", "gateway"), "gateway"), "LIPSYNC_AUTH_TOKEN")["secretKeyRef"]
    assert authorization["credentials"] == {"name": token["name"], "key": token["key"]}


def test_alert_rules_name_metrics_that_exist() -> None:
    rules = yaml.safe_load((K8S / "monitoring" / "alerts.yaml").read_text())
    known = TRITON_METRICS | gateway_metrics() | KUBE_STATE_METRICS
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts) >= 5
    for rule in alerts:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule.get("alert")
        assert rule["labels"]["severity"] in {"warning", "critical"}
        used = set(re.findall(r"\b(?:nv|lipsync|kube)_\w+", rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)


def test_docs_cover_running_scaling_and_watching() -> None:
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "kubectl apply -k deploy/k8s/overlays/gpu",
        "kubectl apply -k deploy/k8s/overlays/cpu-demo",
        "prometheus-adapter",
        "triton_queue_us_per_request",
        "lipsync_active_sessions",
        "## Capacity model",
        "docs/measurements.md",
    ):
        assert needle in docs, needle


# --------------------------------------------------------------------------------------------- TURN relay

# deploy/k8s/turn: the gpu overlay plus coturn on one node's host network (docs/deploy.md, "WebRTC across NAT").
TURN_SECRET = "lipsync-turn"
# The documentation addresses (RFC 5737) the relay refuses as its public address.
PLACEHOLDER_NETWORKS = ("192.0.2.", "198.51.100.", "203.0.113.")


@functools.cache
def rendered_turn() -> Render:
    return Render("turn", kustomize(K8S / "turn"))


def turn_container(render: Render) -> dict[str, Any]:
    return container(render.get("Deployment", "turn"), "turn")


def without_the_relays_host_network(render: Render) -> Render:
    """The render with the two things only the relay may have taken out: host networking, and NET_BIND_SERVICE
    in its bounding set (test_turn_relay_differs_from_the_other_pods_only_where_it_must says why)."""
    objects = yaml.safe_load(yaml.safe_dump(render.objects))
    (turn,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "turn"]
    pod = turn["spec"]["template"]["spec"]
    del pod["hostNetwork"]
    del pod["containers"][0]["securityContext"]["capabilities"]["add"]
    return Render(render.name, objects)


# Every check above that takes a rendered overlay, but the one that lists each workload's peers (the relay is on
# the host network, where NetworkPolicies do not apply: test_turn_relay_is_on_the_host_network_and_opens_no_pod).
TURN_CHECKS = [
    check
    for name, check in sorted(globals().items())
    if name.startswith("test_")
    and list(inspect.signature(check).parameters) == ["render"]
    and name != "test_network_policies_let_in_only_the_expected_peers"
]


@pytest.mark.parametrize("check", TURN_CHECKS, ids=lambda check: check.__name__.removeprefix("test_"))
def test_turn_overlay_keeps_every_rule_of_the_overlays(
    check: Callable[[Render], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # lipsync-turn is one more Secret the operator creates (and docs/deploy.md says how).
    monkeypatch.setitem(globals(), "EXTERNAL_SECRETS", EXTERNAL_SECRETS | {TURN_SECRET})
    check(without_the_relays_host_network(rendered_turn()))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_turn_overlay_validates_against_the_kubernetes_schemas(version: str) -> None:
    test_every_object_validates_against_the_kubernetes_schemas(rendered_turn(), version)


def test_turn_overlay_adds_the_relay_to_the_whole_deployment() -> None:
    render = rendered_turn()
    base = rendered("gpu")
    # The gpu overlay as it renders, but for the gateway (patched: test_turn_secret_is_required_and_shared_...),
    # plus the relay and its settings.
    for obj in base.objects:
        if (obj["kind"], obj["metadata"]["name"]) != ("Deployment", "gateway"):
            assert obj in render.objects, f"{obj['kind']}/{obj['metadata']['name']} differs from overlays/gpu's"
    added = {(o["kind"], o["metadata"]["name"].partition("-settings")[0]) for o in render.objects} - {
        (o["kind"], o["metadata"]["name"].partition("-settings")[0]) for o in base.objects
    }
    assert added == {("Deployment", "turn"), ("ConfigMap", "turn")}


def test_turn_relay_differs_from_the_other_pods_only_where_it_must() -> None:
    render = rendered_turn()
    hosts = [w["metadata"]["name"] for w in render.workloads() if w["spec"]["template"]["spec"].get("hostNetwork")]
    assert hosts == ["turn"]
    pod = render.get("Deployment", "turn")["spec"]["template"]["spec"]
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    # NET_BIND_SERVICE stays in the bounding set only because the image marks turnserver with that file
    # capability, which the kernel refuses to run without it; with no privilege escalation it is never granted.
    context = turn_container(render)["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert context["allowPrivilegeEscalation"] is False
    # One relay on the node whose public address it reports: pinned by a label, replaced rather than doubled.
    deployment = render.get("Deployment", "turn")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["nodeSelector"] == {"lipsync-triton/turn-relay": "true"}
    # What it writes is a volume, as for the other pods (WRITABLE_PATHS).
    mounts = {m["mountPath"] for m in turn_container(render)["volumeMounts"]}
    assert mounts == {"/tmp", "/var/lib/coturn"}
    assert "--pidfile=/tmp/turnserver.pid" in turn_container(render)["args"]


def test_turn_relay_is_on_the_host_network_and_opens_no_pod() -> None:
    render = rendered_turn()
    # NetworkPolicies do not isolate host-network pods: none claims to (the node's firewall does, docs/deploy.md).
    turn_labels = render.get("Deployment", "turn")["spec"]["template"]["metadata"]["labels"]
    for policy in render.all("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector:
            assert not matches(selector.get("matchLabels", {}), turn_labels), policy["metadata"]["name"]
    # Nothing new gets into the other pods: the gateways reach the relay, not the other way round.
    for workload in render.workloads():
        name = workload["metadata"]["name"]
        if name != "turn":
            assert allowed_peers(render, workload) == EXPECTED_PEERS[name], name
    assert not [s for s in render.all("Service") if matches(s["spec"]["selector"], turn_labels)]
    # The ports it listens on are declared (the scheduler then keeps a second pod off that node's ports), and
    # the probes try the TCP listener: coturn has no health endpoint.
    relay = turn_container(render)
    assert {(p["containerPort"], p["protocol"]) for p in relay["ports"]} == {(3478, "UDP"), (3478, "TCP")}
    for kind in ("readinessProbe", "livenessProbe"):
        assert port_number(relay, relay[kind]["tcpSocket"]["port"]) == 3478


def test_turn_relay_is_hardened_as_in_compose() -> None:
    relay = turn_container(rendered_turn())
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["turn"]
    assert relay["image"] == compose["image"] == "coturn/coturn:4.6.3"
    args = relay["args"]
    assert set(compose["command"]) <= set(args), set(compose["command"]) - set(args)
    # And more private ranges than compose: the relay shares the node's network, not a container's.
    denied = {a.partition("=")[2] for a in args if a.startswith("--denied-peer-ip=")}
    assert {"169.254.0.0-169.254.255.255", "100.64.0.0-100.127.255.255", "127.0.0.0-127.255.255.255"} <= denied
    assert "--no-tcp-relay" in args
    # The secret reaches turnserver from the environment, never from the manifest.
    assert not any("static-auth-secret" in a for a in args)
    # Kubernetes would expand $(NAME) in the command before the shell sees it.
    assert "$(" not in " ".join(relay["command"] + args)


def test_turn_secret_is_required_and_shared_with_the_gateways() -> None:
    render = rendered_turn()
    relay = turn_container(render)
    gateway = container(render.get("Deployment", "gateway"), "gateway")
    secret = env_ref(relay, "LIPSYNC_TURN_SECRET")["secretKeyRef"]
    assert secret == {"name": TURN_SECRET, "key": "secret"}  # not optional: a pod without it does not start
    assert env_ref(gateway, "LIPSYNC_TURN_SECRET")["secretKeyRef"] == secret
    # The gateways hand out the address the relay reports: one ConfigMap key, expanded after it is defined.
    address = env_ref(relay, "TURN_EXTERNAL_IP")["configMapKeyRef"]
    assert env_ref(gateway, "TURN_EXTERNAL_IP")["configMapKeyRef"] == address
    names = [var["name"] for var in gateway["env"]]
    assert names.index("TURN_EXTERNAL_IP") < names.index("LIPSYNC_ICE_SERVERS")
    ice = env_of(gateway, render)["LIPSYNC_ICE_SERVERS"]
    assert ice == "turn:$(TURN_EXTERNAL_IP):3478"
    public = render.configmap_data(address["name"])[address["key"]]
    settings = Settings(
        ice_servers=ice.replace("$(TURN_EXTERNAL_IP)", public), turn_secret="s" * 16, triton_url="127.0.0.1:1"
    )
    assert settings.ice_servers == [f"turn:{public}:3478"]
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert f"create secret generic {TURN_SECRET} --from-literal=secret=" in docs
    assert "kubectl apply -k deploy/k8s/turn" in docs and "lipsync-triton/turn-relay=true" in docs


def relay_argv(relay: dict[str, Any]) -> list[str]:
    """The relay container's command and arguments, as the kubelet runs them (nothing for it to expand)."""
    return [*relay["command"], *relay["args"]]


def test_turn_relay_refuses_the_placeholder_address_and_a_short_secret(tmp_path: Path) -> None:
    render = rendered_turn()
    relay = turn_container(render)
    address = env_ref(relay, "TURN_EXTERNAL_IP")["configMapKeyRef"]
    placeholder = render.configmap_data(address["name"])[address["key"]]
    assert placeholder.startswith(PLACEHOLDER_NETWORKS)  # as committed: the operator must set theirs
    cases = {
        f"TURN_EXTERNAL_IP is '{placeholder}', a placeholder": {"TURN_EXTERNAL_IP": placeholder},
        "TURN_EXTERNAL_IP is '', a placeholder": {"TURN_EXTERNAL_IP": ""},
        "needs at least 16 characters": {"LIPSYNC_TURN_SECRET": "fifteen-chars!!"},
    }
    for message, change in cases.items():
        # PATH without turnserver: a script that let these through fails with 127 instead of starting a relay.
        env = {"PATH": str(tmp_path), "LIPSYNC_TURN_SECRET": "s" * 16, "TURN_EXTERNAL_IP": "198.18.0.7"}
        result = subprocess.run(
            relay_argv(relay), env=env | {"NODE_IP": "127.0.0.1"} | change, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1 and result.stderr.startswith("refusing to start"), result
        assert message in result.stderr, result.stderr


def test_turn_relay_allocates_at_its_public_address_with_the_gateways_credentials(tmp_path: Path) -> None:
    # Imported here: aiortc and aioice are only needed by this test of the file.
    from aioice.turn import create_turn_endpoint
    from test_webrtc_ice import answers_stun, free_udp_port

    from gateway.transport.webrtc import ice_servers

    if shutil.which("turnserver") is None:
        pytest.fail("turnserver is missing: install Debian's coturn (apt-get install -y coturn), as .ci/run does")
    relay = turn_container(rendered_turn())
    secret, public = "a-turn-secret-of-some-length", "198.18.0.7"
    port = free_udp_port()
    # The rendered command and arguments, then what this machine needs instead: a free port and range (coturn
    # takes the last value of an option) and a pid file of its own.
    extra = [f"--listening-port={port}", "--min-port=49152", "--max-port=65535", f"--pidfile={tmp_path / 'pid'}"]
    env = {
        "PATH": os.environ["PATH"],
        "LIPSYNC_TURN_SECRET": secret,
        "TURN_EXTERNAL_IP": public,
        "NODE_IP": "127.0.0.1",
    }
    with (tmp_path / "turn.log").open("w") as log:
        process = subprocess.Popen([*relay_argv(relay), *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        answers_stun(port, process)
        (turn,) = ice_servers(
            Settings(ice_servers=f"turn:127.0.0.1:{port}", turn_secret=secret, triton_url="127.0.0.1:1")
        )

        async def allocate() -> tuple[str, int]:
            transport, _ = await create_turn_endpoint(
                asyncio.DatagramProtocol, ("127.0.0.1", port), username=turn["username"], password=turn["credential"]
            )
            try:
                address: tuple[str, int] = transport.get_extra_info("sockname")
                return address
            finally:
                transport.close()

        relayed = asyncio.run(allocate())
    finally:
        process.terminate()
        process.wait(timeout=10)
    # Clients are told the public address (--external-ip), not the node's.
    assert relayed[0] == public and 49152 <= relayed[1] <= 65535, (tmp_path / "turn.log").read_text()[-2000:]
