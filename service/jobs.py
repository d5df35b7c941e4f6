"""The encode job queue: a Redis stream per model version, read by the encoder pool as one consumer group.

Producers merge identical work with a `pending:` marker (SET NX); workers acknowledge and delete an entry
only after its embedding is stored, and take over entries another worker left unacknowledged (XAUTOCLAIM).
An entry delivered too often goes to the dead-letter stream (`<stream>:dead`) and its image gets an `err:` record that
waiters turn into an error. Completion is announced on a pub/sub channel; waiters also poll, because
pub/sub drops messages while a connection is down.

With tenants, every key names the image by its *ref*, `tenant/image_id` (the image_id alone when
authentication is off): one tenant's embeddings, markers and errors are out of reach of another's image_ids,
and each entry carries its tenant for the per-tenant bookkeeping in `quotas`.
"""

from __future__ import annotations

GROUP = "encoders"


def ref(tenant: str, image_id: str) -> str:
    """The name an image has in Redis: its id within its tenant's space."""
    return f"{tenant}/{image_id}" if tenant else image_id


def tenant_of(ref_: str) -> str:
    return ref_.partition("/")[0] if "/" in ref_ else ""


def queued_key(model_version: str, tenant: str) -> str:
    return f"tenant:{model_version}:{tenant}:queued"


def held_key(model_version: str, tenant: str) -> str:
    return f"tenant:{model_version}:{tenant}:held"


def dead_letter_stream(stream: str) -> str:
    return f"{stream}:dead"


def pending_key(model_version: str, image_id: str) -> str:
    return f"pending:{model_version}:{image_id}"


def error_key(model_version: str, image_id: str) -> str:
    return f"err:{model_version}:{image_id}"


def done_channel(model_version: str) -> str:
    return f"done:{model_version}"


PENDING_TTL_S = 600  # a queued job's marker; after it lapses a waiter may queue the image again
ERROR_TTL_S = 600
