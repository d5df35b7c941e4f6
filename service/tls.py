"""TLS for the decoder's gRPC port: certificates read from files and re-read when they change.

Kubernetes updates a mounted Secret by swapping a symlink, so the files are checked (at most once a second,
on a new connection's handshake) and the new pair is used from the next handshake on; a pair that does not
load (a half-written rotation, a key that does not match its certificate) is logged and the old one kept
(`watch.Watched`).
"""

from __future__ import annotations

import logging
import ssl

import grpc

from . import watch

log = logging.getLogger("maskserve.tls")


class ReloadingCertificates:
    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "", check_every_s: float = 1.0) -> None:
        if not (cert_file and key_file):
            raise ValueError("TLS needs both MASKSERVE_TLS_CERT_FILE and MASKSERVE_TLS_KEY_FILE")
        self.files = [f for f in (cert_file, key_file, client_ca_file) if f]
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.watched = watch.Watched(
            self.files, self._load, check_every_s, errors=(OSError, ssl.SSLError, ValueError),
            reloaded=lambda _: log.info("TLS certificate reloaded from %s", cert_file),
            failed=lambda exc: log.error("TLS certificate files could not be loaded (%s); keeping the current ones",
                                         exc))
        self.initial = self.watched.value  # a bad pair at start is an error: refuse to start

    def _load(self):
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert_file, self.key_file)  # pair check
        with open(self.cert_file, "rb") as c, open(self.key_file, "rb") as k:
            pair = (k.read(), c.read())
        ca = open(self.client_ca_file, "rb").read() if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def fetch(self):
        """gRPC's per-handshake hook: a new configuration when the files changed, else None (keep the current)."""
        return self.watched.poll()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self.initial, self.fetch,
                                                   require_client_authentication=bool(self.client_ca_file))


def channel_credentials(root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                        private_key: bytes | None = None) -> grpc.ChannelCredentials:
    """A client's TLS: the CA to trust (None = the system's), and its own pair for mutual TLS."""
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
