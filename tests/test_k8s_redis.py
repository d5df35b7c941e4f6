"""The Redis servers as the dev overlay renders them, run for real: the rendered container arguments and the
rendered ACL file, with a certificate carrying the rendered Certificate's names. Then each client as it
really connects: the app's user does what the decoder and the encoders do, KEDA's read-only user reads the
consumer group's lag the way KEDA's redis-streams scaler does (HELLO 3, INFO, XINFO GROUPS) and nothing else,
the exporter's user reads server statistics and no key, the default user and plaintext are refused."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from test_k8s import KUBECTL, by_name, env_of, of_kind, render
from test_k8s_references import file_secret, mount_source

redis = pytest.importorskip("redis")
trustme = pytest.importorskip("trustme")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

pytestmark = [pytest.mark.skipif(KUBECTL is None, reason="kubectl (for kustomize) is not installed (`make kubectl`)"),
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (`make redis`)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_value(docs, name: str, key: str) -> bytes:
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == name]
    return base64.b64decode(secret["data"][key])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The rendered queue Redis (dev overlay), on loopback: (port, CA file, rendered documents)."""
    docs = render("dev")
    root = tmp_path_factory.mktemp("redis")
    sts = by_name(docs, "StatefulSet", "maskserve-redis-queue")
    spec = sts["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == "redis"]
    cert_resource = by_name(docs, "Certificate", "maskserve-redis-tls")
    ca = trustme.CA()
    issued = ca.issue_cert(*cert_resource["spec"]["dnsNames"], *cert_resource["spec"]["ipAddresses"])
    files = {"tls.crt": issued.cert_chain_pems[0].bytes(), "tls.key": issued.private_key_pem.bytes(),
             "ca.crt": ca.cert_pem.bytes()}
    port = free_port()
    args = []
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for i, a in enumerate(c["args"]):
        prev = c["args"][i - 1] if i else ""
        if prev == "--tls-port":
            a = str(port)
        elif a.startswith("/"):  # a file in a mounted Secret: written where the test can read it
            volume, _, rel = mount_source(spec, c, a)
            secret, key = file_secret(spec, c, a)
            data = files[key] if secret == cert_resource["spec"]["secretName"] else secret_value(docs, secret, key)
            (root / volume["name"]).mkdir(exist_ok=True)
            (root / volume["name"] / rel).write_bytes(data)
            a = str(root / volume["name"] / rel)
        for name, value in env.items():
            a = a.replace(f"$({name})", value)
        args.append(a)
    (root / "data").mkdir()
    proc = subprocess.Popen(["redis-server", *args, "--bind", "127.0.0.1", "--dir", str(root / "data"),
                             "--logfile", str(root / "redis.log")])
    ca_file = root / "client-ca.crt"
    ca_file.write_bytes(files["ca.crt"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (root / "redis.log").read_text()
            time.sleep(0.05)
    yield port, str(ca_file), docs
    proc.terminate()
    proc.wait(10)


def connect(server, user, password, **kw):
    port, ca, _ = server
    return redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, username=user, password=password,
                       socket_timeout=5, decode_responses=True, retry=Retry(NoBackoff(), 0), **kw)


def password_of(docs, key: str) -> str:
    (secret,) = [s["metadata"]["name"] for s in of_kind(docs, "Secret") if s["metadata"]["name"].startswith("maskserve-redis-auth")]
    return secret_value(docs, secret, key).decode()


def test_plaintext_and_the_default_user_are_refused(server):
    port, ca, docs = server
    with socket.create_connection(("127.0.0.1", port), timeout=2) as plain:  # TLS only: plaintext is not spoken
        plain.sendall(b"PING\r\n")
        try:
            answer = plain.recv(64)
        except (TimeoutError, ConnectionError):
            answer = b""
    assert b"PONG" not in answer
    with pytest.raises(redis.AuthenticationError):
        connect(server, None, None).ping()
    with pytest.raises(redis.AuthenticationError):
        connect(server, "maskserve", "guess").ping()


def test_the_apps_user_does_what_the_decoder_and_encoders_do(server):
    _, _, docs = server
    encoder = by_name(docs, "Deployment", "maskserve-encoder")
    env = env_of(encoder["spec"]["template"]["spec"]["containers"][0], docs)
    user = urlsplit(env["MASKSERVE_QUEUE_REDIS_URL"]).username
    r = connect(server, user, password_of(docs, "maskserve.password"))
    stream, group = env["MASKSERVE_QUEUE"], "encoders"
    r.xgroup_create(stream, group, id="$", mkstream=True)
    first = r.xadd(stream, {"image": "x"})
    r.xadd(stream, {"image": "y"})
    (_, entries), = r.xreadgroup(group, "worker-1", {stream: ">"}, count=1)
    assert r.xpending_range(stream, group, "-", "+", 10)
    r.xclaim(stream, group, "worker-2", 0, [first])
    r.xautoclaim(stream, group, "worker-3", 0)
    r.xack(stream, group, first)
    r.xdel(stream, first)
    r.xadd(f"{stream}:dead", {"reason": "test"})
    assert r.xlen(stream) == 1
    r.set("emb:1", "e" * 1024, ex=60)
    assert r.getex("emb:1", ex=120) and r.exists("emb:1") and r.expire("emb:1", 30)
    r.zadd("tenant:acme", {"emb:1": 1.0})
    r.zrem("tenant:acme", "emb:1")
    r.publish("ready", "emb:1")
    assert r.register_script("return redis.call('GET', KEYS[1])")(keys=["emb:1"])
    assert r.info("memory")["maxmemory"] and r.time() and r.delete("emb:1")
    for dangerous in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "0"), ("KEYS", "*"), ("ACL", "SETUSER", "intruder", "on")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*dangerous)


def test_kedas_user_reads_the_lag_and_nothing_else(server):
    _, _, docs = server
    so = by_name(docs, "ScaledObject", "maskserve-encoder")
    meta = so["spec"]["triggers"][0]["metadata"]
    # As KEDA's go-redis client connects (HELLO 3 with AUTH), and as its scaler reads the lag.
    r = connect(server, meta["username"], password_of(docs, "keda.password"), protocol=3)
    assert int(r.info()["redis_version"].split(".")[0]) >= 7  # the scaler's check before lagCount
    app = connect(server, "maskserve", password_of(docs, "maskserve.password"))
    app.xgroup_create(meta["stream"], meta["consumerGroup"], id="0", mkstream=True) if not app.exists(meta["stream"]) else None
    app.xadd(meta["stream"], {"image": "z"})
    groups = {g["name"]: g for g in r.xinfo_groups(meta["stream"])}
    assert groups[meta["consumerGroup"]]["lag"] >= 1
    assert r.xlen(meta["stream"]) >= 1 and r.xpending(meta["stream"], meta["consumerGroup"]) is not None
    for refused in (lambda: r.xadd(meta["stream"], {"a": "b"}), lambda: r.get("emb:1"),
                    lambda: r.xinfo_groups("another:stream"), lambda: r.xgroup_destroy(meta["stream"], "encoders"),
                    lambda: r.config_get("*"), lambda: r.publish("ready", "x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()


def test_the_exporters_user_reads_statistics_and_no_key(server):
    _, _, docs = server
    r = connect(server, "exporter", password_of(docs, "exporter.password"), client_name="redis_exporter")
    assert r.info("all")["maxmemory"] > 0 and r.config_get("maxmemory")
    r.slowlog_get()
    r.execute_command("LATENCY", "LATEST")
    for refused in (lambda: r.get("emb:1"), lambda: r.xlen("maskserve:jobs"), lambda: r.set("x", 1)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            refused()


def test_the_services_own_client_connects_with_the_rendered_settings(server, tmp_path):
    """maskserve's Redis client, configured as the rendered encoder is (URL user, password file, CA file), with
    only the host moved to loopback: TLS verified, the password read from its file."""
    redis_clients = pytest.importorskip("maskserve.service.redis_clients")
    from maskserve.service.config import Settings

    port, ca, docs = server
    encoder = by_name(docs, "Deployment", "maskserve-encoder")["spec"]["template"]["spec"]
    env = env_of(encoder["containers"][0], docs)
    secret, key = file_secret(encoder, encoder["containers"][0], env["MASKSERVE_REDIS_PASSWORD_FILE"])
    password_file = tmp_path / "password"
    password_file.write_bytes(secret_value(docs, secret, key))
    url = urlsplit(env["MASKSERVE_QUEUE_REDIS_URL"])
    settings = Settings(queue_redis_url=url._replace(netloc=f"{url.username}@127.0.0.1:{port}").geturl(),
                        redis_password_file=str(password_file), redis_tls_ca_file=ca)
    r = redis_clients.connect(settings, queue=True)
    assert r.ping() and r.xlen(env["MASKSERVE_QUEUE"]) >= 0
