"""SegmentConcept: phrases and exemplar boxes on an image named by id, or sent along (encoded first), answered
by the model's concept head (SAM 3) on the heavy-work threads (seconds a phrase: prompts never wait behind
them; SAM 3 has no SegmentEverything to share them with)."""

from __future__ import annotations

import asyncio
import contextvars
import numpy as np

from maskserve.engines import concepts, prompts as prompt_lib

from ..errors import Reason
from ..failures import ServiceError
from ..proto import pb


async def handle(service, request, call):
    head = service.decoding.concepts
    if head is None:
        raise ServiceError(Reason.NOT_SUPPORTED_BY_MODEL, f"the served model ({service.manifest.model_type}, family "
                           f"{service.manifest.family}) has no concept head; SegmentConcept needs a SAM 3 model")
    phrases = _phrases(request, service.settings.max_phrases)
    if len(request.exemplars) > head.slots:
        raise prompt_lib.PromptError(f"{len(request.exemplars)} exemplars; the model takes at most {head.slots}",
                                     "exemplars")
    image_id = await service.embeddings.target(call.caller, request, call.context)
    _, emb = await service.embeddings.require(call.caller, image_id)
    exemplars = [concepts.Exemplar(np.array([e.box.x0, e.box.y0, e.box.x1, e.box.y1], np.float64), not e.negative)
                 for e in request.exemplars]
    concepts.check_exemplars(exemplars, emb.original_size)
    threshold = request.confidence_threshold if request.HasField("confidence_threshold") else None
    results = await asyncio.get_running_loop().run_in_executor(
        service.everything_pool, contextvars.copy_context().run, service.decoding.concept_results, emb, phrases,
        exemplars, threshold, request.options.mask_format, call.tenant)
    return pb.SegmentConceptResponse(image_id=image_id, results=results, model_version=service.version)


def _phrases(request, limit: int) -> list[str | None]:
    if len(request.phrases) > limit:
        raise prompt_lib.PromptError(f"{len(request.phrases)} phrases in one call; at most {limit} are allowed",
                                     "phrases")
    if not request.phrases and not request.exemplars:
        raise prompt_lib.PromptError("no phrases and no exemplars: give a noun phrase or an exemplar box",
                                     "phrases")
    return list(request.phrases) or [None]

