"""The rendered manifests read the way the controllers read them, not the way they look in the source.

Each overlay is rendered (kustomize), then every reference between objects is resolved as the component that
follows it would: Secrets and ConfigMaps after kustomize's name hashing, including the names inside custom
resources (KEDA, cert-manager); Service names through the DNS search path of the namespace of whoever dials
them (KEDA's operator, Prometheus, the apps); TLS names against the certificate the server presents and the CA
the client trusts; Redis users and passwords against the ACL file; NetworkPolicies against the list of flows
the system needs, and nothing else; volumes against the user that writes them; PodDisruptionBudgets at the
autoscaler's minimum; Pod Security "restricted". Each check returns its findings, and the last test feeds it
the defects it exists to catch."""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from test_k8s import GPU_OVERLAYS, KUBECTL, OVERLAYS, by_name, containers, env_of, of_kind, pod_templates, render

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for kustomize) is not installed (`make kubectl`)")

README = Path(__file__).resolve().parent.parent / "k8s" / "README.md"
CLUSTER_DOMAIN = "cluster.local"
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
# Secrets an overlay needs and does not make: the operator creates them (k8s/README.md says how), with these keys.
OPERATOR_SECRETS = {
    "dev": {},
    "gpu": {"maskserve-redis-auth": {"users.acl", "maskserve.password", "keda.password", "exporter.password"},
            "maskserve-access": {"access.json"}},
}
OPERATOR_SECRETS["gpu-sam2.1"] = OPERATOR_SECRETS["gpu"]  # the gpu deployment with another model


@dataclass
class Peer:
    """A pod that opens connections: where it runs and how it is labelled."""
    name: str
    namespace: str
    labels: dict
    namespace_labels: dict = field(default_factory=dict)

    def __post_init__(self):
        self.namespace_labels = {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


# The components outside the namespace, labelled as their own manifests label them: KEDA's operator (release
# manifests and Helm chart: `app: keda-operator`, namespace keda), a Prometheus of prometheus-operator (namespace
# monitoring), and a client anywhere in the cluster.
KEDA = Peer("keda", "keda", {"app": "keda-operator", "name": "keda-operator"})
PROMETHEUS = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s",
                                               "app.kubernetes.io/managed-by": "prometheus-operator"})
CLIENT = Peer("client", "photo-app", {"app": "photo-app"})


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


def namespace_of(docs) -> str:
    (ns,) = {d["metadata"].get("namespace") for d in docs if d["kind"] not in ("Namespace",)}
    return ns


def role(template) -> str:
    return template["metadata"]["labels"].get("app.kubernetes.io/name", "")


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    if not (selector.get("matchLabels", {}).items() <= labels.items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def templates_selected(docs, selector) -> list:
    return [(d, t) for d, t in pod_templates(docs) if selects(selector, t["metadata"]["labels"])]


# --- Secrets and ConfigMaps -----------------------------------------------------------------------------------

def secret_providers(docs, overlay: str) -> dict[str, set[str]]:
    """Secret name → its keys: rendered Secrets (under their hashed names), cert-manager's, the operator's."""
    out = {s["metadata"]["name"]: set(s.get("data", {})) | set(s.get("stringData", {})) for s in of_kind(docs, "Secret")}
    out.update({c["spec"]["secretName"]: set(CERT_MANAGER_KEYS) for c in of_kind(docs, "Certificate")})
    out.update(OPERATOR_SECRETS[overlay])
    return out


def secret_refs(docs):
    """(where, Secret name, key or None) for every reference to a Secret, built-in kinds and custom resources."""
    for d, t in pod_templates(docs):
        spec, where = t["spec"], f"{d['kind']} {d['metadata']['name']}"
        for v in spec.get("volumes", []):
            sources = [v] + [s for s in v.get("projected", {}).get("sources", [])]
            for s in sources:
                if "secret" in s:
                    name = s["secret"].get("secretName") or s["secret"].get("name")
                    keys = [i["key"] for i in s["secret"].get("items", [])] or [None]
                    for key in keys:
                        yield f"{where} volume {v['name']}", name, key
        for c in containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield f"{where} {c['name']} env {e['name']}", ref["name"], ref["key"]
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    yield f"{where} {c['name']} envFrom", e["secretRef"]["name"], None
    for ta in of_kind(docs, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            yield f"TriggerAuthentication {ta['metadata']['name']} {ref['parameter']}", ref["name"], ref["key"]
    for issuer in of_kind(docs, "Issuer"):
        if "ca" in issuer["spec"]:
            for key in ("tls.crt", "tls.key"):
                yield f"Issuer {issuer['metadata']['name']}", issuer["spec"]["ca"]["secretName"], key
    for kind, name, key, where in monitor_refs(docs):
        if kind == "Secret":
            yield where, name, key


MONITORS = ("PodMonitor", "ServiceMonitor", "Probe", "ScrapeConfig")


def monitor_refs(docs):
    """(kind, name, key, where) for the Secrets and ConfigMaps a prometheus-operator object names: its
    SecretKeySelectors (basicAuth, authorization, bearerTokenSecret, keySecret, oauth2) and the
    `secret:`/`configMap:` of its TLS configs. Prometheus reads them from the object's namespace."""
    def walk(node, parent, where):
        if isinstance(node, dict):
            if {"name", "key"} <= set(node) and parent not in ("secret", "configMap"):
                yield "Secret", node["name"], node["key"], where
            for k, v in node.items():
                if k in ("secret", "configMap") and isinstance(v, dict) and "name" in v:
                    yield ("Secret" if k == "secret" else "ConfigMap"), v["name"], v.get("key"), where
                else:
                    yield from walk(v, k, where)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v, parent, where)
    for kind in MONITORS:
        for m in of_kind(docs, kind):
            yield from walk(m["spec"], None, f"{kind} {m['metadata']['name']}")


def configmap_refs(docs):
    for d, t in pod_templates(docs):
        for v in t["spec"].get("volumes", []):
            if "configMap" in v:
                yield f"{d['metadata']['name']} volume {v['name']}", v["configMap"]["name"]
        for c in containers(t["spec"]):
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    yield f"{d['metadata']['name']} {c['name']}", e["configMapRef"]["name"]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    yield f"{d['metadata']['name']} {c['name']} {e['name']}", ref["name"]


def reference_problems(docs, overlay: str) -> list[str]:
    problems = []
    providers = secret_providers(docs, overlay)
    for where, name, key in secret_refs(docs):
        if name not in providers:
            problems.append(f"{where}: Secret {name} does not exist (generated names carry a hash)")
        elif key is not None and key not in providers[name]:
            problems.append(f"{where}: Secret {name} has no key {key}")
    configmaps = {c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")}
    problems += [f"{where}: ConfigMap {name} does not exist" for where, name in configmap_refs(docs) if name not in configmaps]
    problems += [f"{where}: ConfigMap {name} does not exist" for kind, name, _, where in monitor_refs(docs)
                 if kind == "ConfigMap" and name not in configmaps]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for so in of_kind(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]
        if (target.get("kind", "Deployment"), target["name"]) not in names:
            problems.append(f"ScaledObject {so['metadata']['name']}: no {target.get('kind', 'Deployment')} {target['name']}")
        for trigger in so["spec"]["triggers"]:
            ref = trigger.get("authenticationRef")
            if ref and (ref.get("kind", "TriggerAuthentication"), ref["name"]) not in names:
                problems.append(f"ScaledObject {so['metadata']['name']}: no {ref.get('kind', 'TriggerAuthentication')} {ref['name']}")
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) not in names:
            problems.append(f"HPA {hpa['metadata']['name']}: no {target['kind']} {target['name']}")
    scaled = [so["spec"]["scaleTargetRef"]["name"] for so in of_kind(docs, "ScaledObject")]
    scaled += [h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")]
    problems += [f"{n} has two autoscalers" for n in set(scaled) if scaled.count(n) > 1]
    for cert in of_kind(docs, "Certificate"):
        ref = cert["spec"]["issuerRef"]
        if ref.get("kind", "Issuer") == "Issuer" and ("Issuer", ref["name"]) not in names:
            problems.append(f"Certificate {cert['metadata']['name']}: no Issuer {ref['name']}")
    for sts in of_kind(docs, "StatefulSet"):
        if ("Service", sts["spec"]["serviceName"]) not in names:
            problems.append(f"StatefulSet {sts['metadata']['name']}: no Service {sts['spec']['serviceName']}")
    for d, t in pod_templates(docs):
        for v in t["spec"].get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in names:
                problems.append(f"{d['metadata']['name']}: no PersistentVolumeClaim {claim}")
    return problems


def monitoring_problems(docs) -> list[str]:
    """Every pod with a `metrics` port is scraped by a PodMonitor of its namespace, and the port exists."""
    problems = []
    monitors = of_kind(docs, "PodMonitor")
    for d, t in pod_templates(docs):
        ports = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}
        mine = [m for m in monitors if selects(m["spec"]["selector"], t["metadata"]["labels"])
                and not m["spec"].get("namespaceSelector")]
        if "metrics" in ports and not mine:
            problems.append(f"{d['metadata']['name']}: its metrics port is scraped by no PodMonitor")
        for m in mine:
            for endpoint in m["spec"]["podMetricsEndpoints"]:
                if endpoint["port"] not in ports:
                    problems.append(f"PodMonitor {m['metadata']['name']}: {d['metadata']['name']} has no port {endpoint['port']}")
    return problems


# --- Who dials whom: DNS from the dialer's namespace, TLS names and trust, Redis users ------------------------

@dataclass
class Dial:
    who: str
    namespace: str  # of the dialer: where its DNS search path starts
    host: str
    port: int
    tls: bool
    ca: tuple[str, str] | None  # (Secret, key) the client trusts
    user: str | None = None
    password: tuple[str, str] | None = None  # (Secret, key)
    wants: str = ""  # the Service it means to reach
    pod: tuple | None = None  # for loopback: (workload, template)


def resolve(host: str, from_namespace: str, services: dict[str, dict]) -> dict | None:
    """The Service a name reaches from a pod of `from_namespace` (resolv.conf: search <ns>.svc.<domain>
    svc.<domain> <domain>, ndots 5), or None. `services`: FQDN → Service."""
    if host.endswith("."):
        candidates = [host[:-1]]
    else:
        search = [f"{from_namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
        expanded = [f"{host}.{s}" for s in search]
        candidates = expanded + [host] if host.count(".") < 5 else [host] + expanded
    for name in candidates:
        if name in services:
            return services[name]
    return None


def service_fqdns(docs) -> dict[str, dict]:
    return {f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.{CLUSTER_DOMAIN}": s for s in of_kind(docs, "Service")}


def mount_source(spec, container, path: str):
    """(volume, path inside it) for a file path in a container, or (None, None) on the root filesystem."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]["mountPath"].rstrip("/")):
                best = (m, path[len(mp):].lstrip("/"))
    if best is None:
        return None, None, None
    mount, rel = best
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume, mount, rel


def file_secret(spec, container, path: str) -> tuple[str, str] | None:
    """(Secret, key) behind a file a container reads, following items' paths."""
    volume, _, rel = mount_source(spec, container, path)
    if volume is None or "secret" not in volume:
        return None
    items = volume["secret"].get("items")
    if items:
        keys = [i["key"] for i in items if i["path"] == rel]
        return (volume["secret"]["secretName"], keys[0]) if keys else (volume["secret"]["secretName"], None)
    return volume["secret"]["secretName"], rel


def dials(docs) -> list[Dial]:
    ns = namespace_of(docs)
    out = []
    for d, t in pod_templates(docs):
        spec = t["spec"]
        for c in containers(spec):
            env = env_of(c, docs)
            for var, wants in (("MASKSERVE_REDIS_URL", "maskserve-redis-cache"),
                               ("MASKSERVE_QUEUE_REDIS_URL", "maskserve-redis-queue")):
                if var in env:
                    u = urlsplit(env[var])
                    password_file = env.get("MASKSERVE_QUEUE_REDIS_PASSWORD_FILE") if "QUEUE" in var else None
                    password_file = password_file or env.get("MASKSERVE_REDIS_PASSWORD_FILE")
                    out.append(Dial(f"{d['metadata']['name']}/{c['name']} {var}", ns, u.hostname, u.port or 6379,
                                    u.scheme == "rediss", file_secret(spec, c, env.get("MASKSERVE_REDIS_TLS_CA_FILE", "")),
                                    u.username, file_secret(spec, c, password_file) if password_file else None, wants))
            if "REDIS_ADDR" in env:  # redis_exporter
                u = urlsplit(env["REDIS_ADDR"])
                password = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "REDIS_PASSWORD"]
                out.append(Dial(f"{d['metadata']['name']}/{c['name']}", ns, u.hostname, u.port or 6379,
                                u.scheme == "rediss", file_secret(spec, c, env.get("REDIS_EXPORTER_TLS_CA_CERT_FILE", "")),
                                env.get("REDIS_USER"), (password[0]["name"], password[0]["key"]) if password else None,
                                "self", (d, t)))
    for so in of_kind(docs, "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            if trigger["type"].startswith("redis"):
                meta = trigger["metadata"]
                params = {}
                ref = trigger.get("authenticationRef")
                if ref:
                    ta = by_name(docs, ref.get("kind", "TriggerAuthentication"), ref["name"])
                    params = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"].get("secretTargetRef", [])}
                host, _, port = meta["address"].rpartition(":")
                encoder = by_name(docs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
                queue = urlsplit(env_of(encoder["spec"]["template"]["spec"]["containers"][0], docs)["MASKSERVE_QUEUE_REDIS_URL"])
                # KEDA's operator dials from its own namespace, whatever the ScaledObject's.
                out.append(Dial(f"KEDA (ScaledObject {so['metadata']['name']})", KEDA.namespace, host, int(port),
                                meta.get("enableTLS") == "true" or "tls" in params, params.get("ca"),
                                meta.get("username"), params.get("password"), "queue:" + queue.hostname))
    return out


def server_of(docs, dial: Dial):
    """(workload, template, container, port) that answers a dial, or a problem string."""
    if dial.host in ("127.0.0.1", "localhost", "::1"):
        d, t = dial.pod
        for c in t["spec"]["containers"]:
            if any(p["containerPort"] == dial.port for p in c.get("ports", [])):
                return d, t, c
        return f"{dial.who}: nothing in its own pod listens on {dial.port}"
    svc = resolve(dial.host, dial.namespace, service_fqdns(docs))
    if svc is None:
        return f"{dial.who}: {dial.host} resolves to no Service from namespace {dial.namespace}"
    wants = dial.wants
    if wants.startswith("queue:"):  # the same Service the encoders use for the queue, from their namespace
        wants = resolve(wants[6:], namespace_of(docs), service_fqdns(docs))["metadata"]["name"]
    if svc["metadata"]["name"] != wants:
        return f"{dial.who}: {dial.host} reaches Service {svc['metadata']['name']}, not {wants}"
    ports = [p for p in svc["spec"]["ports"] if p["port"] == dial.port]
    if not ports:
        return f"{dial.who}: Service {svc['metadata']['name']} has no port {dial.port}"
    target = ports[0].get("targetPort", dial.port)
    for d, t in templates_selected(docs, {"matchLabels": svc["spec"]["selector"]}):
        for c in t["spec"]["containers"]:
            if any(target in (p.get("name"), p["containerPort"]) for p in c.get("ports", [])):
                return d, t, c
    return f"{dial.who}: no pod behind Service {svc['metadata']['name']} listens on {target}"


def certificate_for(docs, secret: str | None):
    certs = [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
    return certs[0] if certs else None


def redis_server_cert_secret(template, container) -> tuple[str, str] | None:
    args = container.get("args", [])
    if "--tls-cert-file" not in args:
        return None
    return file_secret(template["spec"], container, args[args.index("--tls-cert-file") + 1])


def acl_users(docs, template, container) -> dict[str, list[str]] | None:
    """The Redis server's ACL users (name → rules), where its ACL file is a rendered Secret."""
    args = container.get("args", [])
    if "--aclfile" not in args:
        return {}
    secret, key = file_secret(template["spec"], container, args[args.index("--aclfile") + 1]) or (None, None)
    data = secret_data(docs, secret, key)
    if data is None:
        return None
    users = {}
    for line in data.splitlines():
        words = line.split()
        if words and words[0] == "user":
            users[words[1]] = words[2:]
    return users


def secret_data(docs, name, key) -> str | None:
    for s in of_kind(docs, "Secret"):
        if s["metadata"]["name"] == name and key in s.get("data", {}):
            return base64.b64decode(s["data"][key]).decode()
    return None


def dial_problems(docs) -> list[str]:
    problems = []
    for dial in dials(docs):
        server = server_of(docs, dial)
        if isinstance(server, str):
            problems.append(server)
            continue
        d, t, c = server
        cert_secret = redis_server_cert_secret(t, c)
        if dial.tls != (cert_secret is not None):
            problems.append(f"{dial.who}: TLS {'on' if dial.tls else 'off'}, the server's is {'on' if cert_secret else 'off'}")
            continue
        if dial.tls:
            cert = certificate_for(docs, cert_secret[0])
            if cert is None:
                problems.append(f"{dial.who}: the server's certificate Secret {cert_secret[0]} comes from no Certificate")
                continue
            names = set(cert["spec"].get("dnsNames", [])) | set(cert["spec"].get("ipAddresses", []))
            if dial.host not in names:
                problems.append(f"{dial.who}: {dial.host} is not in {cert['metadata']['name']}'s names {sorted(names)}")
            ca = certificate_for(docs, dial.ca[0]) if dial.ca else None
            if dial.ca is None or dial.ca[1] != "ca.crt" or ca is None or ca["spec"]["issuerRef"] != cert["spec"]["issuerRef"]:
                problems.append(f"{dial.who}: trusts {dial.ca}, not the CA that signs {cert['metadata']['name']}")
        users = acl_users(docs, t, c)
        if users is None:  # the operator's Secret: nothing to read here
            continue
        if users:
            if "off" not in users.get("default", ["off"]) or "on" in users.get("default", []):
                problems.append(f"{d['metadata']['name']}: the default user is not off")
            rules = users.get(dial.user)
            if rules is None or "on" not in rules:
                problems.append(f"{dial.who}: Redis user {dial.user} does not exist or is off")
                continue
            password = secret_data(docs, *dial.password) if dial.password else None
            if password is None:
                problems.append(f"{dial.who}: no password for {dial.user} in a rendered Secret")
            elif password != password.strip() or f"#{hashlib.sha256(password.encode()).hexdigest()}" not in rules:
                problems.append(f"{dial.who}: its password is not the one the ACL file holds for {dial.user}")
    return problems


def decoder_certificate_problems(docs) -> list[str]:
    """Clients reach the decoder by every name of its Services: short (same namespace), <svc>.<ns>.svc, FQDN."""
    decoder = by_name(docs, "Deployment", "maskserve-decoder")
    spec = decoder["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = env_of(c, docs)
    secret = file_secret(spec, c, env["MASKSERVE_TLS_CERT_FILE"])
    key = file_secret(spec, c, env["MASKSERVE_TLS_KEY_FILE"])
    cert = certificate_for(docs, secret[0])
    if cert is None or secret[1] != "tls.crt" or key != (secret[0], "tls.key"):
        return [f"the decoder's certificate files {secret} {key} are not a cert-manager Certificate's"]
    ns = namespace_of(docs)
    wanted = {n for s in of_kind(docs, "Service") if selects({"matchLabels": s["spec"]["selector"]}, decoder["spec"]["template"]["metadata"]["labels"])
              for n in (s["metadata"]["name"], f"{s['metadata']['name']}.{ns}.svc", f"{s['metadata']['name']}.{ns}.svc.{CLUSTER_DOMAIN}")}
    missing = wanted - set(cert["spec"]["dnsNames"])
    return [f"the decoder's certificate lacks {sorted(missing)}"] if missing else []


# --- NetworkPolicies ------------------------------------------------------------------------------------------

def ingress_allowed(policies, src: Peer, dst_namespace: str, dst_labels: dict, port: dict) -> bool:
    mine = [p for p in policies if p["metadata"]["namespace"] == dst_namespace
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], dst_labels)]
    if not mine:
        return True  # not isolated
    for p in mine:
        for rule in p["spec"].get("ingress", []):
            peers = rule.get("from", [])
            if peers and not any(peer_matches(peer, src, dst_namespace) for peer in peers):
                continue
            ports = rule.get("ports", [])
            if not ports or any(port_matches(r, port) for r in ports):
                return True
    return False


def peer_matches(peer: dict, src: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return True  # pod IPs may fall in any block: count it as open
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = selects(ns_selector, src.namespace_labels) if ns_selector is not None else src.namespace == policy_namespace
    return ns_ok and (pod_selector is None or selects(pod_selector, src.labels))


def port_matches(rule: dict, port: dict) -> bool:
    if rule.get("protocol", "TCP") != port.get("protocol", "TCP"):
        return False
    if "port" not in rule:
        return True
    if isinstance(rule["port"], str):
        return rule["port"] == port.get("name")
    return rule["port"] <= port["containerPort"] <= rule.get("endPort", rule["port"])


def network_flows(docs) -> set[tuple[str, str, str]]:
    """(source, destination role, port name) for every flow the policies admit, from every kind of peer."""
    ns = namespace_of(docs)
    pods = {}
    for d, t in pod_templates(docs):
        pods[role(t)] = t
    sources = [KEDA, PROMETHEUS, CLIENT, Peer("stranger", ns, {"app": "debug-shell"})]
    sources += [Peer(r, ns, t["metadata"]["labels"]) for r, t in pods.items()]
    policies = of_kind(docs, "NetworkPolicy")
    flows = set()
    for src in sources:
        for r, t in pods.items():
            for c in t["spec"]["containers"]:
                for port in c.get("ports", []):
                    if ingress_allowed(policies, src, ns, t["metadata"]["labels"], port):
                        flows.add((src.name, r, port["name"]))
    return flows


def needed_flows(docs) -> set[tuple[str, str, str]]:
    ns = namespace_of(docs)
    roles = {role(t) for _, t in pod_templates(docs)}
    everyone = {KEDA.name, PROMETHEUS.name, CLIENT.name, "stranger"} | roles
    flows = {(src, "decoder", port) for src in everyone for port in ("grpc", "https")}  # clients: anyone, anywhere
    flows |= {(app, redis, "redis") for app in ("decoder", "encoder") for redis in ("redis-cache", "redis-queue")}
    flows |= {(KEDA.name, "redis-queue", "redis")}
    flows |= {(PROMETHEUS.name, r, "metrics") for r in ("decoder", "encoder", "redis-cache", "redis-queue")}
    assert ns
    return flows


# --- Volumes, Pod Security, disruption budgets --------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def pod_security_problems(template, level: str = "restricted") -> list[str]:
    """Pod Security Standards (v1.30): the checks of "baseline", and with "restricted" its own."""
    spec, problems = template["spec"], []
    psc = spec.get("securityContext", {})
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            problems.append(f)
    for v in spec.get("volumes", []):
        kind = (set(v) - {"name"}).pop()
        if kind == "hostPath" or (level == "restricted" and kind not in RESTRICTED_VOLUMES):
            problems.append(f"volume {v['name']}: {kind}")
    if psc.get("seccompProfile", {}).get("type") == "Unconfined":
        problems.append("pod seccomp Unconfined")
    for c in containers(spec):
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        added = set(sc.get("capabilities", {}).get("add", []))
        if level == "restricted":
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                problems.append(f"{name}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{name}: runAsUser 0")
            if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{name}: no RuntimeDefault seccomp profile")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}: capabilities not dropped (ALL)")
            if added - {"NET_BIND_SERVICE"}:
                problems.append(f"{name}: adds {sorted(added)}")
    return problems


def file_mode(volume, rel: str) -> int:
    source = volume.get("secret") or volume.get("configMap") or {}
    for item in source.get("items", []):
        if item["path"] == rel and "mode" in item:
            return item["mode"]
    return source.get("defaultMode", 0o644)


WRITES = {"compile": ["--cache"], "build": ["--out"]}  # the maskserve commands' output folders


def written_paths(container, env) -> list[str]:
    args = container.get("args", [])
    paths = [args[args.index(flag) + 1] for flag in WRITES.get(args[0] if args else "", []) if flag in args]
    paths += [env[v] for v in ("MASKSERVE_CACHE",) if v in env]
    if "redis-server" in " ".join(container.get("command", [])) or container.get("image", "").startswith("redis:"):
        paths.append("/data/.tls-loaded")  # redis' working directory (the image's /data) and the loaded certificate's digest
    return paths


def read_paths(container, env) -> list[str]:
    paths = [v for k, v in env.items() if v and (k.endswith("_FILE") or k == "MASKSERVE_AUTH_FILE") and v.startswith("/")]
    args = container.get("args", [])
    paths += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file", "--aclfile")]
    return paths


def volume_problems(docs, overlay: str) -> list[str]:
    problems, providers = [], secret_providers(docs, overlay)
    for d, t in pod_templates(docs):
        psc = t["spec"].get("securityContext", {})
        claims = [{"name": v["metadata"]["name"], "persistentVolumeClaim": {"claimName": "(template)"}}
                  for v in d["spec"].get("volumeClaimTemplates", [])]  # a StatefulSet's own claims
        spec = {**t["spec"], "volumes": t["spec"].get("volumes", []) + claims}
        for c in containers(spec):
            where = f"{d['metadata']['name']}/{c['name']}"
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                problems.append(f"{where}: writable root filesystem")
            env = env_of(c, docs)
            uid = c.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
            for m in c.get("volumeMounts", []):
                if m.get("subPath") and any(k in v for v in spec["volumes"] if v["name"] == m["name"] for k in ("secret", "configMap", "projected")):
                    problems.append(f"{where}: {m['mountPath']} is a subPath of a Secret or ConfigMap: updates never reach it")
            for path in written_paths(c, env):
                volume, mount, _ = mount_source(spec, c, path)
                if volume is None:
                    problems.append(f"{where}: writes {path} on the read-only root filesystem")
                elif mount.get("readOnly"):
                    problems.append(f"{where}: writes {path} on a read-only mount")
                elif "emptyDir" in volume:
                    pass  # mode 0777
                elif "persistentVolumeClaim" in volume or "ephemeral" in volume:
                    if psc.get("fsGroup") is None and uid != 0:
                        problems.append(f"{where}: {path} is on a volume owned by root (no fsGroup) and {uid} writes it")
                else:
                    problems.append(f"{where}: writes {path} on a {(set(volume) - {'name'}).pop()} volume, which user {uid} cannot write")
            for path in read_paths(c, env):
                volume, mount, rel = mount_source(spec, c, path)
                if volume is None:
                    problems.append(f"{where}: reads {path}, which no volume provides")
                    continue
                if "secret" in volume:
                    secret, key = file_secret(spec, c, path)
                    if key is None or key not in providers.get(secret, set()):
                        problems.append(f"{where}: {path}: Secret {secret} has no key for it")
                    mode = file_mode(volume, rel)
                    readable = mode & 0o004 or (mode & 0o040 and psc.get("fsGroup") is not None) or uid == 0
                    if not readable:
                        problems.append(f"{where}: {path} (mode {oct(mode)}) is not readable by user {uid}")
    return problems


def model_volume_problems(docs) -> list[str]:
    """The export Job writes the model directory on a claim that every node can mount (ReadWriteMany), and the
    encoders' compile step and runtime and the decoders read that same directory on that same claim."""
    (job,) = [j["spec"]["template"]["spec"] for j in of_kind(docs, "Job")]  # the export Job
    (export,) = job["containers"]
    out = export["args"][export["args"].index("--out") + 1]
    volume, _, rel = mount_source(job, export, out)
    if volume is None or "persistentVolumeClaim" not in volume:
        return [f"the export Job writes {out} on no PersistentVolumeClaim"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    problems = []
    if "ReadWriteMany" not in by_name(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]:
        problems.append(f"PersistentVolumeClaim {claim} is not ReadWriteMany: pods on other nodes cannot mount it")
    encoder = by_name(docs, "Deployment", "maskserve-encoder")["spec"]["template"]["spec"]
    decoder = by_name(docs, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]
    readers = [(encoder, c) for c in containers(encoder)] + [(decoder, c) for c in decoder["containers"]]
    for spec, c in readers:
        args, env = c.get("args", []), env_of(c, docs)
        path = args[args.index("--model-dir") + 1] if "--model-dir" in args else env.get("MASKSERVE_MODEL_DIR")
        if path is None:
            continue
        v, _, r = mount_source(spec, c, path)
        if v is None or v.get("persistentVolumeClaim", {}).get("claimName") != claim or r != rel:
            problems.append(f"{c['name']} reads {path}, not the export Job's {out} on {claim}")
    return problems


def minimum_replicas(docs, workload) -> int:
    name, kind = workload["metadata"]["name"], workload["kind"]
    for so in of_kind(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name and so["spec"]["scaleTargetRef"].get("kind", "Deployment") == kind:
            return so["spec"].get("minReplicaCount", 0)
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name and hpa["spec"]["scaleTargetRef"]["kind"] == kind:
            return hpa["spec"].get("minReplicas", 1)
    return workload["spec"].get("replicas", 1)


def disruptions_allowed(pdb, replicas: int) -> int:
    def value(v):
        return math.ceil(replicas * int(v[:-1]) / 100) if isinstance(v, str) else v
    if "maxUnavailable" in pdb["spec"]:
        return min(replicas, value(pdb["spec"]["maxUnavailable"]))
    return max(0, replicas - value(pdb["spec"]["minAvailable"]))


def pdb_problems(docs) -> list[str]:
    problems = []
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        selected = templates_selected(docs, pdb["spec"]["selector"])
        for d, _ in selected:
            n = minimum_replicas(docs, d)
            if n and disruptions_allowed(pdb, n) < 1:
                problems.append(f"PDB {pdb['metadata']['name']}: at {n} replica(s) of {d['metadata']['name']} no drain can proceed")
    return problems


# --- the tests ------------------------------------------------------------------------------------------------

def test_every_secret_configmap_and_object_reference_resolves(overlay):
    name, docs = overlay
    assert reference_problems(docs, name) == []


def test_no_placeholder_is_left(overlay):
    """`NAMESPACE` in the base's DNS names is the overlay's to fill (namespace-dns.yaml)."""
    assert "NAMESPACE" not in json.dumps(overlay[1])


def test_operator_provided_secrets_are_documented(overlay):
    name, _ = overlay
    readme = README.read_text()
    for secret, keys in OPERATOR_SECRETS[name].items():
        command = re.search(rf"kubectl[^\n]*create secret generic {secret}\b(?:[^\n]*\\\n)*[^\n]*", readme)
        assert command, f"k8s/README.md: how to create {secret}"
        assert all(k in command.group(0) for k in keys), (secret, keys)


def test_pods_with_metrics_are_scraped(overlay):
    assert monitoring_problems(overlay[1]) == []


def test_every_dialled_name_resolves_from_the_dialers_namespace_and_matches_the_certificate(overlay):
    docs = overlay[1]
    assert {d.namespace for d in dials(docs)} == {namespace_of(docs), KEDA.namespace}
    assert dial_problems(docs) == []
    assert decoder_certificate_problems(docs) == []


def test_dns_resolution_follows_the_search_path():
    services = {f"q.ns.svc.{CLUSTER_DOMAIN}": {"metadata": {"name": "q"}}}
    assert resolve("q", "ns", services) and resolve("q.ns.svc", "keda", services)
    assert resolve("q.ns.svc.cluster.local.", "keda", services)
    assert resolve("q", "keda", services) is None  # a short name from KEDA's namespace


def test_network_policies_admit_exactly_the_flows_the_system_needs(overlay):
    docs = overlay[1]
    flows, needed = network_flows(docs), needed_flows(docs)
    assert flows - needed == set(), "admitted but not needed"
    assert needed - flows == set(), "needed but refused"


def test_volumes_are_writable_by_their_writers_and_files_readable_by_their_readers(overlay):
    name, docs = overlay
    assert volume_problems(docs, name) == []


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_the_exported_model_is_what_encoders_and_decoders_read(name):
    docs = render(name)
    assert model_volume_problems(docs) == []
    assert len({c["name"] for d, t in pod_templates(docs) for c in containers(t["spec"])
                if "/models" in json.dumps(c.get("volumeMounts", []))}) == 4  # export, compile-engines, encoder, decoder


def test_budgets_allow_a_drain_at_the_autoscalers_minimum(overlay):
    assert pdb_problems(overlay[1]) == []


def test_pods_are_admissible_under_pod_security_restricted(overlay):
    docs = overlay[1]
    for d, t in pod_templates(docs):
        assert pod_security_problems(t) == [], d["metadata"]["name"]
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["name"] == namespace_of(docs)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dev_access_file_holds_the_documented_dev_key():
    from maskserve.service import access

    docs = render("dev")
    decoder = by_name(docs, "Deployment", "maskserve-decoder")["spec"]["template"]["spec"]
    c = decoder["containers"][0]
    secret, key = file_secret(decoder, c, env_of(c, docs)["MASKSERVE_AUTH_FILE"])
    text = secret_data(docs, secret, key)
    table = json.loads(text)
    assert list(table["tenants"]) == ["dev"] and len(table["keys"]) == 1
    assert table["keys"][0]["sha256"] == access.key_hash("msk_dev-only-do-not-use-in-production")
    access.parse(text, access.Limits())  # the service accepts it
    assert "msk_dev-only-do-not-use-in-production" in README.read_text()
    assert "msk_dev-only" not in text  # only the hash is stored


# --- the checks catch what they are for (the defects of issue 18 and their kin) -------------------------------

def mutate(docs, kind, name, change):
    docs = copy.deepcopy(docs)
    change(by_name(docs, kind, name))
    return docs


def test_the_checks_find_the_defects_they_exist_for():
    dev, gpu = render("dev"), render("gpu")
    # KEDA looks up a Secret by its base name (kustomize hashes generated names; CRDs it does not know).
    def base_name(ta):
        ta["spec"]["secretTargetRef"][0]["name"] = "maskserve-redis-auth"
    assert reference_problems(mutate(dev, "TriggerAuthentication", "maskserve-redis-queue", base_name), "dev")

    # The same for a prometheus-operator object naming a generated Secret (scrape credentials).
    def basic_auth(pm):
        pm["spec"]["podMetricsEndpoints"][0]["basicAuth"] = {"password": {"name": "maskserve-access", "key": "access.json"}}
    assert reference_problems(mutate(dev, "PodMonitor", "maskserve", basic_auth), "dev")

    # A short Service name in KEDA's trigger resolves in KEDA's own namespace.
    def short(so):
        so["spec"]["triggers"][0]["metadata"]["address"] = "maskserve-redis-queue:6379"
    assert any("resolves to no Service" in p for p in dial_problems(mutate(dev, "ScaledObject", "maskserve-encoder", short)))

    # The queue Redis admitting only the app's pods: KEDA cannot read the lag.
    def app_only(policy):
        policy["spec"]["ingress"] = [r for r in policy["spec"]["ingress"]
                                     if "keda" not in json.dumps(r)]
    assert (KEDA.name, "redis-queue", "redis") not in network_flows(mutate(dev, "NetworkPolicy", "maskserve-redis-queue", app_only))

    # A policy opening Redis to the whole namespace is caught as much as one that is too tight.
    def open_(policy):
        policy["spec"]["ingress"][0] = {"ports": [{"port": 6379}]}
    assert ("stranger", "redis-cache", "redis") in network_flows(mutate(dev, "NetworkPolicy", "maskserve-redis-cache", open_))

    # A root-owned hostPath engine cache (and Pod Security baseline refuses hostPath).
    def host_path(deployment):
        for v in deployment["spec"]["template"]["spec"]["volumes"]:
            if v["name"] == "engines":
                v.clear()
                v.update({"name": "engines", "hostPath": {"path": "/var/cache/maskserve/engines", "type": "DirectoryOrCreate"}})
    broken = mutate(gpu, "Deployment", "maskserve-encoder", host_path)
    assert any("/engines" in p for p in volume_problems(broken, "gpu"))
    assert pod_security_problems(by_name(broken, "Deployment", "maskserve-encoder")["spec"]["template"], "baseline")

    # minAvailable 1 at one replica refuses every drain.
    def min_available(pdb):
        pdb["spec"] = {"minAvailable": 1, "selector": pdb["spec"]["selector"]}
    assert pdb_problems(mutate(dev, "PodDisruptionBudget", "maskserve-decoder", min_available))

    # A secret mounted with subPath never sees a rotation; a key file only its owner may read.
    def sub_path(deployment):
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        for m in c["volumeMounts"]:
            if m["name"] == "tls":
                m["subPath"] = "tls.crt"
    assert volume_problems(mutate(dev, "Deployment", "maskserve-decoder", sub_path), "dev")

    def owner_only(deployment):
        spec = deployment["spec"]["template"]["spec"]
        del spec["securityContext"]["fsGroup"]
    assert any("not readable" in p for p in volume_problems(mutate(dev, "Deployment", "maskserve-decoder", owner_only), "dev"))

    # A certificate without the name that KEDA dials; a client password that is not the ACL's.
    def no_fqdn(cert):
        cert["spec"]["dnsNames"] = [n for n in cert["spec"]["dnsNames"] if "redis-queue." not in n]
    assert any("is not in" in p for p in dial_problems(mutate(dev, "Certificate", "maskserve-redis-tls", no_fqdn)))

    # A decoder that reads another model directory than the export Job writes, or none of the shared volume.
    sam2 = render("gpu-sam2.1")
    def other_dir(deployment):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        [e for e in env if e["name"] == "MASKSERVE_MODEL_DIR"][0]["value"] = "/models/vit_h"
    assert model_volume_problems(mutate(sam2, "Deployment", "maskserve-decoder", other_dir))
    def no_volume(deployment):
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "models"]
    assert model_volume_problems(mutate(sam2, "Deployment", "maskserve-decoder", no_volume))

    def wrong_password(secret):
        secret["data"]["keda.password"] = base64.b64encode(b"guess").decode()
    auth = [s for s in of_kind(dev, "Secret") if s["metadata"]["name"].startswith("maskserve-redis-auth")][0]
    assert any("password" in p for p in dial_problems(mutate(dev, "Secret", auth["metadata"]["name"], wrong_password)))


def test_the_documented_production_acl_is_the_dev_acl():
    """k8s/README.md's recipe for production credentials grants what the tested dev ACL file grants."""
    def rules(lines, hash_pattern):
        return [re.sub(hash_pattern, "#HASH", line.strip()) for line in lines if line.startswith("user ")]
    documented = rules(README.read_text().splitlines(), r"#\$\(h \w+\)")
    dev = rules((Path(__file__).resolve().parent.parent / "k8s/overlays/dev/secrets/users.acl").read_text().splitlines(),
                r"#[0-9a-f]{64}")
    assert documented == dev and len(dev) == 4
