"""Trust, tried the way an attacker or a careless client would: real processes, real TLS (certificates made
here with trustme), Redis over TLS with an ACL user, an access file with hashed keys, tenants with quotas.
Each attempt gets the status it must, and the service is healthy afterwards."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2

from conftest import metric
from maskserve.service import access, keys
from maskserve.client import Client
from maskserve.v1 import internal_pb2
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack, free_port, start_redis, start_role, stop, wait_listening, wait_serving

trustme = pytest.importorskip("trustme")

KEYS = {t: access.new_key() for t in ("a", "b", "c", "d", "e", "ro", "rot")}
REDIS_PASSWORD = "redis-" + access.new_key()
TENANTS = {"a": {}, "b": {"rate": 4, "burst": 4, "streams": 1}, "c": {"embedding_mb": 2},
           "d": {"queued_jobs": 1}, "e": {}, "ro": {}, "rot": {}}


def access_doc(keys: dict[str, str]) -> dict:
    entries = [{"name": f"{t}-key", "tenant": "ro" if t == "ro" else t, "sha256": access.key_hash(k),
                "rpcs": ["GetModelInfo"] if t == "ro" else ["*"]} for t, k in keys.items()]
    return {"tenants": TENANTS, "keys": entries,
            "clients": [{"subject": "robot-7.fleet.example", "tenant": "robots", "rpcs": ["*"]}]}


def write_atomically(path, text: str) -> None:
    """As Kubernetes updates a mounted Secret: the new file appears whole, under the same name."""
    tmp = f"{path}.new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def image(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    files = {"ca": d / "ca.pem", "other_ca": d / "other_ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    other_ca.cert_pem.write_to_path(files["other_ca"])
    for name, issuer, kwargs in [("server", ca, {"identities": ("127.0.0.1", "localhost")}),
                                 ("redis", ca, {"identities": ("127.0.0.1",)}),
                                 ("robot", ca, {"identities": ("robot-7.fleet.example",)}),
                                 ("stranger", ca, {"identities": ("stranger.example",)}),
                                 ("expired", ca, {"identities": ("robot-7.fleet.example",),
                                                  "not_after": datetime.datetime(2020, 1, 1)}),
                                 ("forged", other_ca, {"identities": ("robot-7.fleet.example",)}),
                                 # a mapped subject as the CN of a certificate whose SAN is not mapped
                                 ("san_unmapped", ca, {"identities": ("unmapped.example",),
                                                       "common_name": "robot-7.fleet.example"}),
                                 ("cn_only", ca, {"identities": (), "common_name": "robot-7.fleet.example"}),
                                 ("server2", other_ca, {"identities": ("127.0.0.1", "localhost")})]:
        cert = issuer.issue_cert(*kwargs.pop("identities"), **kwargs)
        files[name] = d / f"{name}.crt", d / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(files[name][0])
        cert.private_key_pem.write_to_path(files[name][1])
    return files


def read(path) -> bytes:
    return open(path, "rb").read()


def tls(pki, client: str | None = None, ca: str = "ca") -> grpc.ChannelCredentials:
    pair = (read(pki[client][1]), read(pki[client][0])) if client else (None, None)
    return grpc.ssl_channel_credentials(read(pki[ca]), *pair)


@pytest.fixture(scope="module")
def secure(pki, tmp_path_factory):
    """A stack with TLS on gRPC and Redis, an ACL user on Redis, authentication and quotas; plus a second
    decoder on the same Redis that requires client certificates (mutual TLS)."""
    d = tmp_path_factory.mktemp("secure")
    (d / "redis-password").write_text(REDIS_PASSWORD + "\n")
    auth_file = d / "access.json"
    write_atomically(auth_file, json.dumps(access_doc(KEYS)))
    redis_port = free_port()
    server = start_redis(redis_port, d, "--port", "0", "--tls-port", str(redis_port),
                         "--tls-cert-file", str(pki["redis"][0]), "--tls-key-file", str(pki["redis"][1]),
                         "--tls-ca-cert-file", str(pki["ca"]), "--tls-auth-clients", "no",
                         "--user", "default", "off", "--user", "maskserve", "on", f">{REDIS_PASSWORD}", "~*", "&*",
                         "+@all")
    health_port = free_port()
    env = {"MASKSERVE_TLS_CERT_FILE": str(pki["server"][0]), "MASKSERVE_TLS_KEY_FILE": str(pki["server"][1]),
           "MASKSERVE_AUTH_FILE": str(auth_file), "MASKSERVE_REDIS_PASSWORD_FILE": str(d / "redis-password"),
           "MASKSERVE_REDIS_TLS_CA_FILE": str(pki["ca"]), "MASKSERVE_HEALTH_PORT": str(health_port)}
    url = f"rediss://maskserve@127.0.0.1:{redis_port}/0"
    stack = LocalStack(redis_url=url, extra_env=env, log_dir=d, credentials=tls(pki))
    mtls = None
    try:
        with stack:
            mtls_port, mtls_metrics_port = free_port(), free_port()
            mtls_env = {**stack.env("decoder"), **env, "MASKSERVE_GRPC_PORT": str(mtls_port),
                        "MASKSERVE_METRICS_PORT": str(mtls_metrics_port), "MASKSERVE_HEALTH_PORT": "0",
                        "MASKSERVE_TLS_CLIENT_CA_FILE": str(pki["ca"]), "MASKSERVE_REFLECTION": "false"}
            mtls = start_role("decoder", mtls_env, d / "decoder-mtls.log")
            wait_serving(f"127.0.0.1:{mtls_port}", proc=mtls, credentials=tls(pki, "robot"))
            stack.auth_file, stack.health_port, stack.mtls_target, stack.dir = auth_file, health_port, \
                f"127.0.0.1:{mtls_port}", d
            stack.mtls_metrics_port, stack.secure_env = mtls_metrics_port, env
            stack.redis_client = redis.Redis.from_url(f"rediss://maskserve:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0",
                                                      ssl_ca_certs=str(pki["ca"]))
            yield stack
            for proc in (stack.decoder, stack.encoder, mtls):
                assert proc.poll() is None, "a process died during the security tests"
            assert_healthy(stack.target, tls(pki))
            logs = "".join(p.read_text(errors="replace") for p in d.glob("*.log"))
            for secret in (*KEYS.values(), REDIS_PASSWORD):
                assert secret not in logs, "a secret was written to a log"
    finally:
        stop(mtls)
        stop(server)


def assert_healthy(target: str, credentials=None) -> None:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def client(stack, pki, tenant: str | None = None, key: str | None = None) -> Client:
    return Client(stack.target, timeout=30, api_key=key or (KEYS[tenant] if tenant else None),
                  root_certificates=read(pki["ca"]))


def code_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_calls_without_credentials_are_unauthenticated_but_probes_need_none(secure, pki):
    with client(secure, pki) as c:
        for call in (c.model_info, lambda: c.encode(image(1)), lambda: c.segment_everything(image(1)),
                     lambda: c.stub.SegmentPrompt(pb.SegmentPromptRequest(image_id="0" * 32), timeout=10),
                     lambda: list(c.stub.StreamSegment(iter([pb.StreamSegmentRequest(image_id="0" * 32)]),
                                                       timeout=10))):
            error = code_of(call)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            assert "no credentials" in error.details()
    assert_healthy(secure.target, tls(pki))  # health over TLS, no key
    assert_healthy(f"127.0.0.1:{secure.health_port}")  # and in plaintext on the probe port
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.secure_channel(secure.target, tls(pki)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5)
        assert "maskserve.v1.Segmenter" in {s.name for s in reply.list_services_response.service}
    with grpc.insecure_channel(f"127.0.0.1:{secure.health_port}") as channel:  # the probe port serves nothing else
        error = code_of(lambda: pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_wrong_key_is_unauthenticated_and_a_narrow_key_permission_denied(secure, pki):
    for key in ("msk_not-a-key", KEYS["a"] + "x"):
        with client(secure, pki, key=key) as c:
            error = code_of(c.model_info)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not valid" in error.details()
            assert key not in error.details()
    with grpc.secure_channel(secure.target, tls(pki)) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        error = code_of(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5,
                                                  metadata=(("authorization", "Basic dXNlcjpwYXNz"),)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in error.details()
    with client(secure, pki, "ro") as c:
        assert c.model_info().model_version  # allowed
        error = code_of(lambda: c.encode(image(2)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "may not call EncodeImage" in error.details()


def test_plaintext_to_the_tls_port_is_refused(secure, pki):
    with grpc.insecure_channel(secure.target) as channel:
        error = code_of(lambda: pb_grpc.SegmenterStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=5, metadata=(("authorization", f"Bearer {KEYS['a']}"),)))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with Client(secure.target, api_key=KEYS["a"], root_certificates=read(pki["other_ca"])) as c:  # wrong server CA
        assert code_of(c.model_info).code() == grpc.StatusCode.UNAVAILABLE
    with client(secure, pki, "a") as c:
        assert c.model_info().model_version


def test_mutual_tls_maps_the_client_certificate_to_its_tenant(secure, pki):
    def call(cert: str | None, key: str | None = None):
        with grpc.secure_channel(secure.mtls_target, tls(pki, cert)) as channel:
            metadata = (("authorization", f"Bearer {key}"),) if key else ()
            return pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5, metadata=metadata)

    assert call("robot").model_version  # its certificate is its identity: no key needed
    for cert in (None, "expired", "forged"):  # no certificate, an expired one, one from another CA: no handshake
        assert code_of(lambda: call(cert)).code() == grpc.StatusCode.UNAVAILABLE, cert
    error = code_of(lambda: call("stranger"))  # a good certificate the access file does not know
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not mapped" in error.details()
    assert call("stranger", KEYS["a"]).model_version  # ... which may still bring a key
    assert call("robot").model_version
    assert call("cn_only").model_version  # without SANs, the common name is the certificate's name
    error = code_of(lambda: call("san_unmapped"))  # with SANs, only they name it: a mapped CN does not count
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not mapped" in error.details()
    assert_healthy(secure.mtls_target, tls(pki, "robot"))
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.secure_channel(secure.mtls_target, tls(pki, "robot")) as channel:  # MASKSERVE_REFLECTION=false
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        error = code_of(lambda: list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_tenant_cannot_read_probe_or_time_another_tenants_embeddings(secure, pki):
    photo = image(10, 120, 160)
    with client(secure, pki, "a") as a, client(secure, pki, "e") as b:
        id_a = a.encode(photo)
        a.image_id = id_a
        masks, _, _ = a.predict(np.array([[40.0, 50.0]]), np.array([1]))
        done = metric(secure.metrics_ports[1], 'maskserve_encoder_jobs_total{outcome="done"}')
        # B asks for A's image_id: NOT_FOUND, exactly as for an id nobody has (existence does not leak)
        for image_id in (id_a, "f" * 32):
            error = code_of(lambda: b.stub.SegmentPrompt(pb.SegmentPromptRequest(
                image_id=image_id, prompts=[pb.Prompt(points=[pb.Point(x=40, y=50, label=1)])]),
                timeout=10, metadata=b.metadata))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert error.details() == (f"no embedding for image_id {image_id!r} (unknown, or expired from the "
                                       "store); send the image with EncodeImage again")
        (reply,) = b.stub.StreamSegment(iter([pb.StreamSegmentRequest(sequence=1, image_id=id_a)]), timeout=10,
                                        metadata=b.metadata)
        assert reply.error.code == grpc.StatusCode.NOT_FOUND.value[0]
        error = code_of(lambda: b.segment_everything(id_a))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        # strings that try to step outside B's space are not ids at all
        for image_id in (f"a/{id_a}", "../" + id_a, id_a.upper()):
            assert code_of(lambda: b.stub.SegmentPrompt(pb.SegmentPromptRequest(
                image_id=image_id, prompts=[pb.Prompt(points=[pb.Point(x=1, y=1, label=1)])]),
                timeout=10, metadata=b.metadata)).code() == grpc.StatusCode.NOT_FOUND
        # B sends A's bytes: a different id, not ready, and a fresh encode (B's call takes what a miss takes)
        reply = b.stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(raw=pb.RawImage(
            width=160, height=120, format=pb.PIXEL_FORMAT_RGB8, data=photo.tobytes())), wait=False),
            timeout=10, metadata=b.metadata)
        assert reply.image_id != id_a and not reply.ready
        assert b.encode(photo) == reply.image_id
        assert metric(secure.metrics_ports[1], 'maskserve_encoder_jobs_total{outcome="done"}') == done + 1
        b.image_id = reply.image_id
        masks_b, _, _ = b.predict(np.array([[40.0, 50.0]]), np.array([1]))
        np.testing.assert_array_equal(masks, masks_b)  # the same answer, from B's own embedding
        a.image_id = id_a
        assert a.predict(np.array([[40.0, 50.0]]), np.array([1]))[0].shape == masks.shape  # A unaffected
    keys = {k.decode() for k in secure.redis_client.scan_iter("emb:*")}
    assert any(k.endswith(f":a/{id_a}") for k in keys) and any(k.endswith(f":e/{reply.image_id}") for k in keys)
    assert not any(k.endswith(f":{id_a}") and "/" not in k for k in keys)


def retry_info(error) -> tuple[float, str]:
    status = rpc_status.from_call(error)
    assert status is not None, "RESOURCE_EXHAUSTED without rich details"
    delay, reason = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToNanoseconds() / 1e9
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    assert delay is not None and delay > 0
    return delay, reason


def test_a_flooding_tenant_trips_its_rate_while_others_are_served(secure, pki):
    with client(secure, pki, "a") as a, client(secure, pki, "b") as b:
        refused, served = [], 0
        for _ in range(20):
            try:
                b.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=b.metadata)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                refused.append(retry_info(exc))
            assert a.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=a.metadata).model_version
            served += 1
        assert len(refused) >= 10 and served == 20
        delay, reason = refused[-1]
        assert reason == "QUOTA_RATE" and delay <= 1 / 4 + 1e-3
        time.sleep(delay)
        assert b.model_info().model_version  # after the advised wait, B is served again
        # one stream open at a time for B: a second is refused, with retry advice
        gate = threading.Event()

        def hold():
            yield pb.StreamSegmentRequest(sequence=1, image_id="0" * 32)
            gate.wait(10)

        time.sleep(1.0)  # B's rate refills
        held = b.stub.StreamSegment(hold(), timeout=20, metadata=b.metadata)
        assert next(held).error.code == grpc.StatusCode.NOT_FOUND.value[0]  # the stream is open and working
        second = iter([pb.StreamSegmentRequest(sequence=1, image_id="0" * 32)])
        error = code_of(lambda: list(b.stub.StreamSegment(second, timeout=10, metadata=b.metadata)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_info(error)[1] == "QUOTA_STREAMS"
        gate.set()
        list(held)
        assert b.model_info().model_version
    port = secure.metrics_ports[0]
    assert metric(port, 'maskserve_rejected_requests_total{reason="rate",tenant="b"}') >= 10
    assert metric(port, 'maskserve_rejected_requests_total{reason="streams",tenant="b"}') == 1
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'tenant="a"' in text and not any(k in text for k in KEYS.values())
    assert not any(hashlib.sha256(k.encode()).hexdigest() in text for k in KEYS.values())


def test_queued_jobs_and_embeddings_held_are_limited_per_tenant(secure, pki):
    with client(secure, pki, "c") as c:  # two embeddings of the tiny model (1 MiB each) fit in 2 MiB
        c.encode(image(20))
        c.encode(image(21))
        c.encode(image(20))  # one it holds already: no new room needed
        error = code_of(lambda: c.encode(image(22)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 MiB" in error.details()
        delay, reason = retry_info(error)
        assert reason == "QUOTA_EMBEDDING_BYTES" and 3000 < delay <= 3600  # when its oldest embedding lapses
    with client(secure, pki, "a") as a:
        assert a.encode(image(22))  # another tenant is not affected
    os.kill(secure.encoder.pid, signal.SIGSTOP)  # hold the pool still, so that a job stays queued
    try:
        with client(secure, pki, "d") as d:
            reply = d.stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(raw=pb.RawImage(
                width=128, height=96, format=pb.PIXEL_FORMAT_RGB8, data=image(30).tobytes())), wait=False),
                timeout=10, metadata=d.metadata)
            assert not reply.ready
            error = code_of(lambda: d.encode(image(31), wait=False))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_info(error)[1] == "QUOTA_QUEUED_JOBS"
    finally:
        os.kill(secure.encoder.pid, signal.SIGCONT)
    with client(secure, pki, "d") as d:
        assert d.encode(image(30))  # the queued one finishes; then there is room again
        assert d.encode(image(31))


def test_a_rotated_access_file_takes_effect_while_serving(secure, pki):
    old, new = KEYS["rot"], access.new_key()
    with client(secure, pki, key=old) as c:
        assert c.model_info().model_version
    write_atomically(secure.auth_file, "{ not json")  # a broken rotation keeps the last good file
    time.sleep(1.5)
    with client(secure, pki, key=old) as c:
        assert c.model_info().model_version
    write_atomically(secure.auth_file, json.dumps(access_doc({**KEYS, "rot": new})))
    deadline = time.monotonic() + 10
    while True:
        with client(secure, pki, key=old) as c:
            try:
                c.model_info()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
        assert time.monotonic() < deadline, "the old key still works 10 s after the file changed"
        time.sleep(0.2)
    with client(secure, pki, key=new) as c:
        assert c.model_info().model_version
    KEYS["rot"] = new


def test_a_rotated_server_certificate_takes_effect_on_new_connections(secure, pki):
    import shutil

    cert, key = pki["server"]
    backup = [f"{cert}.bak", f"{key}.bak"]
    shutil.copy(cert, backup[0])
    shutil.copy(key, backup[1])
    try:
        for src, dst in zip(pki["server2"], (cert, key)):
            write_atomically(dst, open(src).read())
        deadline = time.monotonic() + 10
        while True:
            try:
                assert_healthy(secure.target, tls(pki, ca="other_ca"))
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new certificate is not served 10 s after it changed"
                time.sleep(0.3)
        with grpc.secure_channel(secure.target, tls(pki)) as channel:  # the old CA no longer fits
            error = code_of(lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                               timeout=5))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for src, dst in zip(backup, (cert, key)):
            write_atomically(dst, open(src).read())
    deadline = time.monotonic() + 10
    while True:
        try:
            assert_healthy(secure.target, tls(pki))
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.3)


def test_a_rotated_redis_password_is_used_on_reconnect(secure, pki):
    """The Redis ACL password changes (new Secret, ACL SETUSER) and old connections are dropped: decoder and
    encoder reconnect with the new password from the file, without a restart."""
    new = "redis-" + access.new_key()
    write_atomically(secure.dir / "redis-password", new + "\n")
    r = secure.redis_client  # authenticated with the old password; its connection stays
    r.acl_setuser("maskserve", enabled=True, reset_passwords=True, passwords=[f"+{new}"], keys=["*"],
                  channels=["*"], commands=["+@all"])
    r.execute_command("CLIENT", "KILL", "USER", "maskserve", "SKIPME", "yes")
    deadline = time.monotonic() + 30
    with client(secure, pki, "a") as a:
        while True:
            try:
                image_id = a.encode(image(40))  # the decoder's and the encoder's Redis, both reconnected
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "no reconnect with the rotated password within 30 s"
                time.sleep(0.5)
        a.image_id = image_id
        assert a.predict(np.array([[10.0, 10.0]]), np.array([1]))[0].shape == (3, 96, 128)
    assert_healthy(secure.target, tls(pki))
    logs = "".join(p.read_text(errors="replace") for p in secure.dir.glob("*.log"))
    assert new not in logs


def forged_chain(image_id: str, depth: int) -> bytes:
    """A refinement handle made up by the caller: recipes nested `depth` deep, as the old unsigned format was."""
    handle = b""
    for i in range(depth):
        p = pb.Prompt(points=[pb.Point(x=5 + i % 50, y=5, label=1)])
        if handle:
            p.mask_from.handle = handle
        handle = internal_pb2.LogitsRecipe(image_id=image_id, prompt=p, single_mask=False).SerializeToString()
    return handle


def test_refinement_stores_nothing_shared_and_its_work_per_call_is_bounded(secure, pki):
    """The reported attack: a tenant chained refinements 63 deep from handles it made up, so that each call
    made and wrote 63 answers' logits into the shared cache and evicted other tenants' embeddings."""
    r = secure.redis_client
    with client(secure, pki, "a") as victim, client(secure, pki, "e") as attacker:
        victim_ids = [victim.encode(image(50 + i)) for i in range(4)]
        attacker.image_id = attacker.encode(image(60))
        stub, md = attacker.stub, attacker.metadata

        def segment(handle: bytes | None, x: float, who=attacker, **kw):
            prompt = pb.Prompt(points=[pb.Point(x=x, y=30, label=1)])
            if handle is not None:
                prompt.mask_from.handle = handle
            return who.stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=who.image_id, prompts=[prompt]),
                                          timeout=30, metadata=who.metadata, **kw).results[0].logits_handle

        handles = [segment(None, 20)]
        keys_before = set(r.scan_iter("*"))
        used_before = r.info("memory")["used_memory"]
        for depth in (2, 63):  # handles the service never gave are refused before any work
            error = code_of(lambda: segment(forged_chain(attacker.image_id, depth), 20))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a handle" in error.details()
        for i in range(20):  # an honest interactive loop: each click refines the last answer
            handles.append(segment(handles[-1], 21 + i))
        assert len(handles[-1]) < 2048  # a long chain's handle stays small
        assert set(r.scan_iter("*")) == keys_before, "refinement wrote to the shared cache"
        assert r.info("memory")["used_memory"] - used_before < 256 * 1024
        for image_id in victim_ids:
            assert r.exists(keys.embedding_key(victim_version(victim), f"a/{image_id}"))
        # another tenant cannot use the handles, not even on an image of its own
        victim.image_id = victim_ids[0]
        error = code_of(lambda: segment(handles[3], 20, who=victim))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a handle" in error.details()
    # another replica (empty process cache) makes a short chain again, and refuses a long one unworked
    with Client(secure.mtls_target, timeout=30, api_key=KEYS["e"], root_certificates=read(pki["ca"]),
                certificate_chain=read(pki["stranger"][0]), private_key=read(pki["stranger"][1])) as other:
        other.image_id = attacker.image_id
        remakes = metric(secure.mtls_metrics_port, "maskserve_refinement_remakes_total")
        assert segment(handles[2], 25, who=other)
        assert metric(secure.mtls_metrics_port, "maskserve_refinement_remakes_total") == remakes + 3
        error = code_of(lambda: segment(handles[-1], 25, who=other))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "send the mask input as data" in error.details()
        assert metric(secure.mtls_metrics_port, "maskserve_refinement_remakes_total") == remakes + 3


def victim_version(c: Client) -> str:
    return c.model_info().model_version


def test_a_revoked_key_ends_its_open_streams(secure, pki):
    import queue

    key = access.new_key()
    write_atomically(secure.auth_file, json.dumps(access_doc({**KEYS, "rev": key})))
    deadline = time.monotonic() + 10
    with client(secure, pki, key=key) as c:
        while True:
            try:
                c.model_info()
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new key was not accepted within 10 s"
                time.sleep(0.2)
        image_id = c.encode(image(70))
        requests: queue.Queue = queue.Queue()
        replies = c.stub.StreamSegment(iter(requests.get, None), timeout=60, metadata=c.metadata)
        requests.put(pb.StreamSegmentRequest(sequence=1, image_id=image_id))
        assert next(replies).image_id == image_id
        everything = c.stub.SegmentEverything(pb.SegmentEverythingRequest(
            image_id=image_id, options=pb.AutomaticOptions(points_per_side=96)), timeout=120, metadata=c.metadata)
        assert next(everything).WhichOneof("payload") == "progress"
        write_atomically(secure.auth_file, json.dumps(access_doc(KEYS)))  # the key is removed
        time.sleep(1.5)  # the access file is looked at once a second
        requests.put(pb.StreamSegmentRequest(sequence=2, prompt=pb.Prompt(points=[pb.Point(x=5, y=5, label=1)])))
        error = code_of(lambda: next(replies))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not valid" in error.details()
        requests.put(None)
        error = code_of(lambda: list(everything))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not valid" in error.details()


def test_unbounded_ids_are_refused_unread_and_never_echoed(secure, pki):
    """A 10 KB, 64 KB or 1 MB image_id was echoed three times into NOT_FOUND's message and details, past
    gRPC's metadata limit: the client saw RESOURCE_EXHAUSTED instead."""
    with client(secure, pki, "a") as c:
        for n in (65, 10_000, 65_536, 1 << 20):
            long_id = "f" * n
            calls = [lambda: c.stub.SegmentPrompt(pb.SegmentPromptRequest(
                         image_id=long_id, prompts=[pb.Prompt(points=[pb.Point(x=1, y=1, label=1)])]),
                         timeout=10, metadata=c.metadata),
                     lambda: list(c.stub.SegmentEverything(pb.SegmentEverythingRequest(image_id=long_id),
                                                           timeout=10, metadata=c.metadata))]
            for call in calls:
                error = code_of(call)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (n, error.code())
                assert f"{n} characters" in error.details() and "f" * 65 not in error.details()
                assert sum(len(k) + len(v) for k, v in error.trailing_metadata()) < 2048
            (reply,) = c.stub.StreamSegment(iter([pb.StreamSegmentRequest(sequence=1, image_id=long_id)]),
                                            timeout=10, metadata=c.metadata)
            assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and len(reply.error.message) < 300


def raw_grpc(target: str, path: str, message: bytes, headers: list, ca) -> dict:
    """One unary call over HTTP/2 written by hand (TLS, ALPN h2), for metadata grpcio's client will not send;
    the response's headers and trailers."""
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    host, port = target.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"https"), (b":path", path.encode()),
                              (b":authority", target.encode()), (b"content-type", b"application/grpc"),
                              (b"te", b"trailers"), *headers])
        conn.send_data(1, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        found: dict = {}
        while True:
            data = sock.recv(65536)
            assert data, "the connection closed before the call ended"
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    found.update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return found
            sock.sendall(conn.data_to_send())


def test_a_key_with_a_stray_byte_is_refused_and_never_logged(secure, pki):
    """`Bearer <valid key>` plus one byte that is not UTF-8 was accepted, and grpcio logged the whole header."""
    log = secure.dir / "decoder.log"
    before = log.stat().st_size
    for tail in (b"\xff", b"\x85", b"\xa0"):
        found = raw_grpc(secure.target, "/maskserve.v1.Segmenter/GetModelInfo", b"",
                         [(b"authorization", b"Bearer " + KEYS["a"].encode() + tail)], pki["ca"])
        assert found.get(b"grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0]).encode(), found
    found = raw_grpc(secure.target, "/maskserve.v1.Segmenter/GetModelInfo", b"",
                     [(b"authorization", b"Bearer " + KEYS["a"].encode())], pki["ca"])
    assert found.get(b"grpc-status") == b"0", found  # the same call, the key alone: served
    time.sleep(0.5)
    written = log.read_bytes()[before:].decode(errors="replace")
    assert KEYS["a"] not in written and KEYS["a"][4:20] not in written
    assert "Invalid encoding" not in written or "[redacted]" in written


def test_a_wrong_redis_password_is_logged_by_the_decoder(secure, pki):
    wrong = secure.dir / "wrong-redis-password"
    wrong.write_text("not-the-password\n")
    port = free_port()
    env = {**secure.env("decoder"), **secure.secure_env, "MASKSERVE_REDIS_PASSWORD_FILE": str(wrong),
           "MASKSERVE_GRPC_PORT": str(port), "MASKSERVE_METRICS_PORT": "0", "MASKSERVE_HEALTH_PORT": "0"}
    log = secure.dir / "decoder-wrong-password.log"
    proc = start_role("decoder", env, log)
    try:
        deadline = time.monotonic() + 60
        while "invalid username-password pair" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the decoder did not log why it is not serving"
            time.sleep(0.3)
        with grpc.secure_channel(f"127.0.0.1:{port}", tls(pki)) as channel:
            for _ in range(10):  # never ready, on every look
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                time.sleep(0.2)
        assert "not serving: the cache Redis cannot be used" in log.read_text()
    finally:
        stop(proc)
