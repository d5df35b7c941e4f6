"""SegmentPrompt: prompts on an image named by id, or sent along (encoded first), in one decoder batch."""

from __future__ import annotations

from maskserve.engines import prompts as prompt_lib

from ..proto import pb


async def handle(service, request, call):
    if request.WhichOneof("target") == "image":
        image_id, _, _ = await service.embeddings.image_for(call.caller, request.image, call.context)
    elif request.image_id:
        image_id = request.image_id
    else:
        raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
    results = await service.segment(call.caller, image_id, request.prompts, request.options)
    return pb.SegmentPromptResponse(image_id=image_id, results=results, model_version=service.version)
