"""EncodeImage: the image's id in the caller's space, its embedding queued (and with `wait` waited for)."""

from __future__ import annotations

from ..proto import pb


async def handle(service, request, call):
    image_id, ready, (h, w) = await service.embeddings.image_for(call.caller, request.image, call.context,
                                                                 wait=request.wait)
    return pb.EncodeImageResponse(image_id=image_id, ready=ready, width=w, height=h, model_version=service.version)
