"""The encode job queue: a Redis stream per model version, read by the encoder pool as one consumer group.

Producers merge identical work with a `pending:` marker (SET NX); workers acknowledge and delete an entry
only after its embedding is stored, and take over entries another worker left unacknowledged (XAUTOCLAIM).
An entry delivered too often goes to the dead-letter stream (`<stream>:dead`) and its image gets an `err:` record that
waiters turn into an error. Completion is announced on a pub/sub channel; waiters also poll, because
pub/sub drops messages while a connection is down.
"""

from __future__ import annotations

GROUP = "encoders"


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
