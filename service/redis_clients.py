"""Connections to the two Redis (the embedding store and the job queue), with an ACL user and TLS.

The user name comes from the URL (`rediss://maskserve@host:6379/0`: `rediss` = TLS); the password from a
file, read at each new connection, so a rotated Secret is picked up on reconnect without a restart and the
password is never in an environment variable, a URL in a log, or an error message.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.credentials import CredentialProvider

from .config import Settings


class PasswordFile(CredentialProvider):
    def __init__(self, username: str | None, path: str) -> None:
        self.username, self.path = username, path

    def get_credentials(self):
        with open(self.path) as f:
            password = f.read().strip()
        return (self.username, password) if self.username else (password,)

    async def get_credentials_async(self):
        return self.get_credentials()


def options(settings: Settings, url: str, password_file: str) -> tuple[str, dict]:
    """(URL, keyword arguments) for `from_url`: the password file's provider, and the TLS files for rediss://."""
    kwargs: dict = {}
    parts = urlsplit(url)
    if password_file:
        if parts.password:
            raise ValueError("give the Redis password in the URL or in a password file, not both")
        user = unquote(parts.username) if parts.username else None
        kwargs["credential_provider"] = PasswordFile(user, password_file)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if parts.scheme == "rediss":
        kwargs.update(ssl_cert_reqs="required", ssl_ca_certs=settings.redis_tls_ca_file or None,
                      ssl_certfile=settings.redis_tls_cert_file or None,
                      ssl_keyfile=settings.redis_tls_key_file or None)
    return url, kwargs


def connect(settings: Settings, queue: bool = False, asyncio: bool = False, **extra):
    """The store's (or with `queue`, the job queue's) Redis client."""
    if queue:
        url, password_file = settings.queue_url, settings.queue_redis_password_file or settings.redis_password_file
    else:
        url, password_file = settings.redis_url, settings.redis_password_file
    url, kwargs = options(settings, url, password_file)
    return (aioredis if asyncio else redis).Redis.from_url(url, **kwargs, **extra)
