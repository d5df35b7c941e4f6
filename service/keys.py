"""Every name the service gives a thing in Redis — keys, streams, the consumer group, the pub/sub channel —
declared here once; the job protocol (`jobs`), the store (`store`), the quotas and refinement use these.

Images are named by their *ref*, `tenant/image_id` (the image_id alone when authentication is off), so one
tenant's embeddings, job markers and errors are out of reach of another's image_ids. Everything but the
embeddings lives on the queue's Redis (which never evicts); the embeddings on the cache's (which may be the same).
"""

from __future__ import annotations

GROUP = "encoders"  # the encoder pool's consumer group on the job stream (KEDA scales on its lag)
HANDLE_KEY = "refinement:handle-key"  # the deployment's secret for signing refinement handles, made once


def ref(tenant: str, image_id: str) -> str:
    """The name an image has in Redis: its id within its tenant's space."""
    return f"{tenant}/{image_id}" if tenant else image_id


def tenant_of(ref_: str) -> str:
    """The tenant of a ref ("" for an image_id alone)."""
    return ref_.partition("/")[0] if "/" in ref_ else ""


def job_stream(model_version: str) -> str:
    """The encode job stream of a model version, unless `MASKSERVE_QUEUE` names it (`Settings.stream`)."""
    return f"jobs:{model_version}"


def dead_letter_stream(stream: str) -> str:
    """Where a job stream's entries go when the encoder pool gives up on them, with the reason."""
    return f"{stream}:dead"


def pending_key(model_version: str, image_ref: str) -> str:
    """The marker of a queued (or in-work) job: identical work is queued once (SET NX)."""
    return f"pending:{model_version}:{image_ref}"


def error_key(model_version: str, image_ref: str) -> str:
    """Why an image's job was dead-lettered, for its waiters."""
    return f"err:{model_version}:{image_ref}"


def done_channel(model_version: str) -> str:
    """The pub/sub channel on which a stored image's ref is announced."""
    return f"done:{model_version}"


def embedding_key(model_version: str, image_ref: str) -> str:
    """An image's embedding (`store.pack`), under its TTL, on the cache's Redis."""
    return f"emb:{model_version}:{image_ref}"


def queued_key(model_version: str, tenant: str) -> str:
    """A tenant's jobs waiting for the encoder pool (a sorted set, by when each was queued)."""
    return f"tenant:{model_version}:{tenant}:queued"


def held_key(model_version: str, tenant: str) -> str:
    """A tenant's embeddings in the store (a sorted set, by when each lapses)."""
    return f"tenant:{model_version}:{tenant}:held"


def session_key(model_version: str, session_ref: str) -> str:
    """A tracking session's checkpoint (a hash: owner, state, image_id), under its TTL, on the queue's Redis."""
    return f"track:{model_version}:{session_ref}"
