"""SegmentEverything: the automatic generator over the service. The image and its crops are encoded as
images (through the queue and the store, with progress as each arrives); each crop's point grid is decoded
on the generator's own threads; the crops' masks are merged and sent in pages. A cancelled call stops its
decoder work at the next batch."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import NamedTuple


from maskserve.engines import automatic, prompts as prompt_lib

from .. import errors, everything, images, keys, metrics
from ..errors import Reason
from ..failures import ServiceError
from ..proto import pb


class Crop(NamedTuple):
    box: list  # x0, y0, x1, y1 in the image
    layer: int  # crop layer: 0 is the whole image
    ref: str  # the crop's image ref in the store
    payload: bytes | None  # its pixels to encode; None when the store has it already (an image_id request)


def _progress(stage: str, done: int, total: int) -> pb.SegmentEverythingResponse:
    return pb.SegmentEverythingResponse(progress=pb.EverythingProgress(stage=stage, done=done, total=total))


async def handle(service, request, call):
    if service.family.no_generator:
        raise ServiceError(Reason.NOT_SUPPORTED_BY_MODEL, service.family.no_generator)
    s = service.settings
    options = everything.options_from_proto(request.options).validate(
        s.everything_max_crop_layers, s.everything_max_points, family=service.family,
        recommended=service.manifest.generator)
    image_id, size, crops = await _images(service, request, options, call)
    timings: dict[str, float] = {}
    async with contextlib.aclosing(_encode_crops(service, crops, call, timings)) as encoding:
        async for progress in encoding:
            yield progress
    found = []
    async with contextlib.aclosing(_decode_crops(service, crops, size, options, timings, found, call)) as decoding:
        async for progress in decoding:
            yield progress
    if options.min_mask_region_area and service.family.full_size_cleanup:
        yield _progress("cleanup", 0, 1)
    result = await asyncio.get_running_loop().run_in_executor(
        service.everything_pool, automatic.finish, found, size, options, service.family, timings)
    for stage, seconds in timings.items():
        metrics.EVERYTHING_STAGE.labels(stage).observe(seconds)
    for page in everything.pages(result, image_id, service.version, timings):
        yield pb.SegmentEverythingResponse(masks=page)


async def _images(service, request, options: automatic.Options, call):
    """(image_id, original size, [Crop]) for a request; a crop is an image like any other:
    content-addressed, queued, cached."""
    target = request.WhichOneof("target")
    if target == "image_id":
        if options.crop_n_layers:
            raise automatic.ParameterError("crop_n_layers", "crops are cut from the image's pixels: send the "
                                           "image itself, not its image_id")
        ref, emb = await service.embeddings.require(call.caller, request.image_id)
        h, w = emb.original_size
        return request.image_id, (h, w), [Crop([0, 0, w, h], 0, ref, None)]
    if target != "image":
        raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
    payload = images.canonical_payload(request.image)
    rgb = await service.embeddings.decoded(payload)
    tenant = call.tenant
    image_id = images.image_id(payload, service.version, tenant)
    crops = []
    for box, layer in automatic.crop_boxes(rgb.shape[:2], options.crop_n_layers, options.crop_overlap_ratio):
        if layer == 0:
            crops.append(Crop(box, 0, keys.ref(tenant, image_id), payload))
        else:
            crop_payload = images.rgb_payload(rgb[box[1]:box[3], box[0]:box[2]])
            crops.append(Crop(box, layer, keys.ref(tenant, images.image_id(crop_payload, service.version,
                                                                                       tenant)), crop_payload))
    return image_id, rgb.shape[:2], crops


async def _encode_crops(service, crops: list, call, timings: dict):
    """Queue the crops the store lacks and wait for all; progress as each embedding arrives."""
    store = service.embeddings
    t = time.perf_counter()
    missing = [c for c in crops if c.payload is not None and not await store.renew(call.caller, c.ref)]
    yield _progress("encoding", len(crops) - len(missing), len(crops))
    for c in missing:
        await store.enqueue(call.caller, c.ref, c.payload)
    waits = [asyncio.ensure_future(store.wait_encoded(call.caller, c.ref, c.payload, call.context)) for c in missing]
    try:
        for i, done in enumerate(asyncio.as_completed(waits)):
            await done
            yield _progress("encoding", len(crops) - len(missing) + i + 1, len(crops))
    finally:
        for w in waits:
            w.cancel()
    timings["encode"] = time.perf_counter() - t


async def _decode_crops(service, crops: list, size, options: automatic.Options, timings: dict, found: list, call):
    """Each crop's point grid on the generator's threads, into `found`; progress four times a second."""
    grids = options.layer_grids()
    total = sum(len(grids[c.layer]) for c in crops)
    progress = [0]
    cancel = threading.Event()

    def advance(n: int) -> None:
        progress[0] += n
        metrics.EVERYTHING_POINTS.inc(n)

    loop = asyncio.get_running_loop()
    try:
        for c in crops:
            emb = await service.embeddings.get(call.caller, c.ref)
            if emb is None:
                raise ServiceError(Reason.EMBEDDING_EVICTED, "a crop's embedding left the store before it was decoded "
                                   "(the store is short of memory); retry", errors.retry_info(5.0))
            work = loop.run_in_executor(service.everything_pool, service.decoding.everything_crop, emb, c.box,
                                        grids[c.layer], size, options, cancel, advance, timings)
            work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a cancelled call's is dropped
            while True:
                finished, _ = await asyncio.wait({work}, timeout=0.25)
                yield _progress("decoding", progress[0], total)
                if finished:
                    break
            found.append(work.result())
    finally:
        cancel.set()
