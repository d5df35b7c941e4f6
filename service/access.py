"""Who is calling: API keys and client certificates mapped to tenants, and what each tenant may use.

The access file (JSON, `MASKSERVE_AUTH_FILE`) holds only SHA-256 hashes of the keys: the keys are 256-bit
random strings, so a plain hash is as good as a slow one and costs a microsecond per call. The file is checked
for changes at most once a second and re-read when it changes (a rotated Kubernetes Secret); a broken new
version is logged and the last good one kept, so an operator's typo never opens or closes the service
(`watch.Watched`).

    {"tenants": {"acme": {"rate": 50, "burst": 100, "streams": 8, "queued_jobs": 200, "embedding_mb": 4096}},
     "keys": [{"name": "acme-backend", "tenant": "acme", "sha256": "<hex>", "rpcs": ["*"]}],
     "clients": [{"subject": "robot-7.fleet.example", "tenant": "robots", "rpcs": ["SegmentPrompt"]}]}
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass

from . import watch

log = logging.getLogger("maskserve.access")

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")
KEY_PREFIX = "msk_"
def _rpcs() -> tuple[str, ...]:
    from .proto import pb

    return tuple(m.name for m in pb.DESCRIPTOR.services_by_name["Segmenter"].methods)


RPCS = _rpcs()  # the service's RPCs, as the proto declares them


@dataclass(frozen=True)
class Limits:
    """A tenant's quotas; 0 = unlimited. Rate and streams count on each decoder replica (no shared state on a
    request's path); queued jobs and embeddings held count across the whole deployment (kept in Redis)."""
    rate: float = 0.0  # requests per second
    burst: int = 0  # requests at once above the rate; 0 = one second's worth
    streams: int = 0  # StreamSegment / SegmentEverything calls open at once
    queued_jobs: int = 0  # images waiting for the encoder pool
    embedding_mb: int = 0  # embeddings in the store, MiB

    @classmethod
    def from_settings(cls, s) -> "Limits":
        return cls(s.tenant_rate, s.tenant_burst, s.tenant_streams, s.tenant_queued_jobs, s.tenant_embedding_mb)


@dataclass(frozen=True)
class Caller:
    tenant: str  # "" when authentication is off: one shared space, as before tenants existed
    name: str  # the key's or certificate's name in the access file, for logs (never the key itself)
    rpcs: frozenset[str]
    limits: Limits

    def may(self, rpc: str) -> bool:
        return "*" in self.rpcs or rpc in self.rpcs


class AccessError(Exception):
    """UNAUTHENTICATED (no or unknown credentials) or PERMISSION_DENIED (known, but not for this RPC)."""

    def __init__(self, denied: bool, message: str) -> None:
        super().__init__(message)
        self.denied = denied


NOBODY = Caller("", "anonymous", frozenset({"*"}), Limits())  # before a call is authenticated


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


TOKEN = re.compile(r"[\x21-\x7e]{1,512}")  # printable ASCII: a key with any other byte is no key of ours


def bearer(metadata) -> str | None:
    for name, value in metadata or ():
        if name == "authorization":
            scheme, _, token = str(value).partition(" ")
            token = token.strip(" \t")
            if scheme.lower() != "bearer" or not TOKEN.fullmatch(token):
                raise AccessError(False, "the authorization metadata must be `Bearer <API key>` (printable ASCII)")
            return token
    return None


@dataclass(frozen=True)
class _Table:
    keys: dict[str, Caller]  # sha256 hex → caller
    clients: dict[str, Caller]  # certificate subject (a SAN DNS/URI name, or the CN of one without SANs) → caller


def parse(text: str, defaults: Limits) -> _Table:
    """The access file's content, checked whole: any error names the entry."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or set(doc) - {"tenants", "keys", "clients"}:
        raise ValueError("the access file holds an object with `tenants`, `keys` and `clients`")
    tenants = {}
    for name, limits in (doc.get("tenants") or {}).items():
        if not TENANT_NAME.match(name):
            raise ValueError(f"tenant name {name!r}: lower-case letters, digits, '_', '.', '-' (at most 63)")
        unknown = set(limits) - {f.name for f in dataclasses.fields(Limits)}
        if unknown:
            raise ValueError(f"tenant {name!r}: unknown limits {sorted(unknown)}")
        tenants[name] = dataclasses.replace(defaults, **{k: type(getattr(defaults, k))(v) for k, v in limits.items()})

    def entry(e: dict, where: str) -> Caller:
        tenant = e.get("tenant", "")
        if not TENANT_NAME.match(tenant):
            raise ValueError(f"{where}: tenant {tenant!r} is not a valid tenant name")
        rpcs = frozenset(e.get("rpcs", ["*"]))
        if rpcs - {"*", *RPCS}:
            raise ValueError(f"{where}: unknown rpcs {sorted(rpcs - {'*', *RPCS})}; known: {', '.join(RPCS)}")
        return Caller(tenant, str(e.get("name", where)), rpcs, tenants.get(tenant, defaults))

    keys, clients = {}, {}
    for i, e in enumerate(doc.get("keys") or []):
        digest = str(e.get("sha256", "")).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"keys[{i}]: `sha256` must be the 64 hex digits of the key's SHA-256")
        keys[digest] = entry(e, f"keys[{i}]")
    for i, e in enumerate(doc.get("clients") or []):
        if not e.get("subject"):
            raise ValueError(f"clients[{i}]: `subject` (the certificate's DNS/URI name or common name) is required")
        clients[str(e["subject"])] = entry(e, f"clients[{i}]")
    return _Table(keys, clients)


class AccessFile:
    """The access file, re-read when it changes; `authenticate` maps a call's credentials to its Caller."""

    def __init__(self, path: str, defaults: Limits, check_every_s: float = 1.0) -> None:
        self.path, self.defaults = path, defaults
        self.watched = watch.Watched(
            [path], lambda: parse(open(path).read(), defaults), check_every_s,  # a bad file at start: refuse to start
            reloaded=lambda table: log.info("access file %s reloaded: %d keys, %d client identities", path,
                                            len(table.keys), len(table.clients)),
            failed=lambda exc: log.error("access file %s could not be read (%s); keeping the last good version",
                                         path, exc))

    def current(self) -> _Table:
        return self.watched.current()

    def authenticate(self, metadata, auth_context) -> Caller:
        """`auth_context`: a function giving the TLS peer's properties, called only when no key came."""
        table = self.current()
        key = bearer(metadata)
        if key is not None:
            found = table.keys.get(key_hash(key))
            if found is None:
                raise AccessError(False, "the API key is not valid (unknown, or revoked)")
            return found
        subjects = certificate_subjects(auth_context())
        for subject in subjects:
            found = table.clients.get(subject)
            if found is not None:
                return found
        if subjects:
            raise AccessError(False, "the client certificate is not mapped to a tenant; send an API key "
                                     "(`authorization: Bearer <key>`) or ask the operator to map its subject")
        raise AccessError(False, "this call has no credentials: send `authorization: Bearer <API key>`")


def certificate_subjects(auth_context: dict) -> list[str]:
    """The verified client certificate's names: its SAN DNS/URI names when it has any (then the common name is
    not used: RFC 6125 matches the SAN alone), else its common name; empty without mutual TLS."""
    def names(prop: str) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in auth_context.get(prop, ())]
    return names("x509_subject_alternative_name") or names("x509_common_name")
