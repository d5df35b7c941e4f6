"""SegmentPrompt: prompts on an image named by id, or sent along (encoded first), in one decoder batch."""

from __future__ import annotations

from ..proto import pb


async def handle(service, request, call):
    image_id = await service.embeddings.target(call.caller, request, call.context)
    results = await service.segment(call.caller, image_id, request.prompts, request.options)
    return pb.SegmentPromptResponse(image_id=image_id, results=results, model_version=service.version)
