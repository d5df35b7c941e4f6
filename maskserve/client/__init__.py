"""The maskserve client: `Client` (blocking) and `AsyncClient` (asyncio) answer like `SamPredictor` against a
running decoder service; `RemoteLogits`, the low-res logits left on the service until read; the typed errors
failed calls raise (`errors`). What `pip install maskserve` (no `server` extra) is for: it needs grpc,
protobuf, NumPy and pycocotools, and imports nothing of the service (`maskserve.service`)."""

from . import errors
from .aio import AsyncClient
from .errors import (DeadlineExceeded, FieldViolation, InvalidArgument, MaskserveError, NotFound,
                     PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)
from .messages import decode_mask, image_message, prompt_message
from .remote_logits import RemoteLogits
from .sync import Client

__all__ = ["Client", "AsyncClient", "RemoteLogits", "errors", "MaskserveError", "InvalidArgument", "NotFound",
           "ResourceExhausted", "Unavailable", "Unauthenticated", "PermissionDenied", "DeadlineExceeded",
           "FieldViolation", "image_message", "prompt_message", "decode_mask"]
