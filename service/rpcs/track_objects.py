"""TrackObjects: a session of frames and object prompts (service/tracking.py keeps it, engines/tracking.py runs
it). Frames are encoded on the encoder pool like any image; the tracking step runs on this replica's tracking
threads. Each message is answered in order; a failure is reported on its message and the session goes on."""

from __future__ import annotations

import asyncio
import contextvars
import io
import time

import grpc
import numpy as np

from maskserve.engines import masks as mask_lib

from .. import failures, metrics
from ..errors import Reason
from ..failures import ServiceError
from ..proto import pb
from .stream_segment import Inbox


def invalid(message: str) -> ServiceError:
    return ServiceError(Reason.INVALID_TRACK_REQUEST, message)


async def handle(service, requests, call):
    sessions = service.sessions
    sessions.require_tracker()  # a SAM model refuses the call itself (FAILED_PRECONDITION)
    loop = asyncio.get_running_loop()

    def run(fn, *args):
        return loop.run_in_executor(service.tracking_pool, contextvars.copy_context().run, fn, *args)

    inbox = Inbox(requests)
    live = None
    try:
        while (req := await _next(inbox, service.settings.track_idle_s)) is not None:
            started = time.perf_counter()
            call.recheck()
            try:
                if live is None:
                    if req.WhichOneof("item") != "start":
                        raise invalid("the first TrackObjects message must be start (a new session or one to "
                                      "resume)")
                    service.quotas.admit(call.caller)
                    live, resumed = await sessions.open(call.caller, req.start, run)
                    response = pb.TrackResponse(sequence=req.sequence, session=_session(service, live, resumed))
                else:
                    response = await _answer(service, live, req, inbox, call, run)
                    if sessions.due(live) and response.WhichOneof("outcome") == "frame":
                        await _checkpoint(sessions, live, run, response, call)
                code = grpc.StatusCode.OK
            except Exception as exc:  # noqa: BLE001 - reported on the message, the session goes on
                if isinstance(exc, ServiceError) and exc.reason is Reason.SESSION_TAKEN_OVER:
                    raise
                code, error = failures.stream_error(exc, call.tenant)
                response = pb.TrackResponse(sequence=req.sequence, error=error)
            yield response
            call.message_done(code, started)
    finally:
        inbox.close()
        if live is not None:
            sessions.close(live)
            try:
                await asyncio.shield(sessions.checkpoint(live, run))  # where a reconnect resumes
            except ServiceError:
                pass  # taken over by another stream: its checkpoints are the session's now
            except Exception:  # noqa: BLE001 - the last interval's checkpoint stands
                metrics.REDIS_ERRORS.inc()


async def _checkpoint(sessions, live, run, response, call) -> None:
    """Checkpoint after a message; a failure is reported on its answer (a takeover ends the stream)."""
    try:
        await sessions.checkpoint(live, run)
    except Exception as exc:  # noqa: BLE001 - quota, Redis: the frame's answer stands
        if isinstance(exc, ServiceError) and exc.reason is Reason.SESSION_TAKEN_OVER:
            raise
        _, error = failures.stream_error(exc, call.tenant)
        response.frame.checkpoint_error.CopyFrom(error)


async def _next(inbox: Inbox, idle_s: float):
    try:
        return await asyncio.wait_for(inbox.next(), idle_s)
    except asyncio.TimeoutError:
        raise ServiceError(Reason.SESSION_IDLE, f"no message for {idle_s:g} s: the session is checkpointed and "
                                                "this stream ends; resume the session by its id") from None


def _session(service, live, resumed: bool) -> pb.TrackSession:
    engine = live.engine
    return pb.TrackSession(session_id=live.id, frame_index=-1 if engine is None else engine.frame,
                           object_ids=sorted(engine.objects) if engine else [], resumed=resumed,
                           model_version=service.version)


async def _answer(service, live, req, inbox: Inbox, call, run) -> pb.TrackResponse:
    item = req.WhichOneof("item")
    if item == "start":
        raise invalid("start comes once, first")
    if item in ("frame", "image_id") and live.drop_stale and inbox.newer_frame_waiting():
        live.dropped += 1
        metrics.TRACKED_FRAMES.labels("dropped").inc()
        return pb.TrackResponse(sequence=req.sequence, dropped=True)
    service.quotas.admit(call.caller)
    if item is None:
        raise invalid("empty TrackObjects message: set frame, image_id, add_object, correct_object, "
                      "remove_object or reset")
    if item in ("frame", "image_id"):
        if item == "frame":
            image_id, _, _ = await service.embeddings.image_for(call.caller, req.frame, call.context)
        else:
            image_id = req.image_id
        _, emb = await service.embeddings.require(call.caller, image_id)
        tracker = service.sessions.tracker
        if live.engine is None:
            live.engine = tracker.session(emb.original_size, live.expected_frames)
        elif tuple(emb.original_size) != live.engine.original_size:
            h, w = live.engine.original_size
            raise invalid(f"frame of {emb.original_size[1]}x{emb.original_size[0]}; this session's frames are "
                          f"{w}x{h}")
        dropped, live.dropped = live.dropped, 0

        def step():
            with live.lock:  # the frame and its image_id change together (a checkpoint reads both)
                results = live.engine.track(emb.arrays)
                live.image_id = image_id
                return results
        try:
            results = await run(step)
        except ValueError as exc:  # a frame past the declared length
            raise invalid(str(exc)) from None
        # A tracked frame's embedding is needed while it is the session's current frame (prompts, a resume):
        # it lapses soon after, not an embedding lifetime later, so a long video does not fill the store.
        await service.embeddings.keep_for(call.caller, image_id, service.settings.track_frame_ttl_s)
        metrics.TRACKED_FRAMES.labels("tracked").inc()
        return await _frame(live, req, results, run, dropped)
    engine = live.engine
    if engine is None:
        raise ServiceError(Reason.NO_IMAGE_YET, "send a frame before prompting objects")
    if item == "reset":
        await run(_locked(live, engine.reset))
        return await _frame(live, req, [], run, 0)
    if item == "remove_object":
        if req.remove_object not in engine.objects:
            raise invalid(f"object {req.remove_object} is not tracked (tracked: {sorted(engine.objects)})")
        await run(_locked(live, engine.remove_object, req.remove_object))
        return await _frame(live, req, engine.results(), run, 0)
    if engine.arrays is None:  # resumed: prompts need the current frame's embedding, while it is stored
        if not live.image_id:
            raise ServiceError(Reason.NO_IMAGE_YET, "send a frame before prompting objects")
        _, emb = await service.embeddings.require(call.caller, live.image_id)
        await run(_locked(live, engine.resume, emb.arrays))
    prompt = getattr(req, item)
    oid = prompt.object_id
    if item == "add_object":
        if oid in engine.objects:
            raise invalid(f"object {oid} is tracked already: correct it with correct_object, or remove it first")
        if len(engine.objects) >= service.settings.track_max_objects:
            from ..quotas import QuotaExceeded

            raise QuotaExceeded("tracked_objects", 1.0, f"session {live.id} tracks {len(engine.objects)} objects, "
                                                        "its limit; remove one first")
    elif oid not in engine.objects:
        raise invalid(f"object {oid} is not tracked: add it with add_object (tracked: {sorted(engine.objects)})")
    append = item == "correct_object" and not prompt.replace_points and not prompt.HasField("box")
    if append and engine.points_on_frame(oid) + len(prompt.points) > service.settings.max_points:
        raise invalid(f"object {oid} would have {engine.points_on_frame(oid) + len(prompt.points)} clicks on this "
                      f"frame; at most {service.settings.max_points} (replace_points starts again)")
    work = await run(_prompt_work, service, engine, prompt, item == "correct_object")

    def apply():
        with live.lock:
            return work()
    results = await run(apply)
    return await _frame(live, req, results, run, 0)


def _locked(live, fn, *args):
    def locked():
        with live.lock:
            return fn(*args)
    return locked


def _prompt_work(service, engine, prompt, append: bool):
    """The engine call a prompt makes, checked here (errors name the field)."""
    has_mask = prompt.HasField("mask")
    if has_mask and (prompt.points or prompt.HasField("box")):
        raise invalid("an object prompt is points and/or a box, or a mask — not both")
    if has_mask:
        mask = _decode_mask(prompt.mask, engine.original_size)
        return lambda: engine.add_mask(prompt.object_id, mask)
    if not prompt.points and not prompt.HasField("box"):
        raise invalid("an object prompt needs points, a box or a mask")
    if len(prompt.points) > service.settings.max_points:
        raise invalid(f"{len(prompt.points)} points; at most {service.settings.max_points}")
    h, w = engine.original_size
    points = labels = box = None
    if prompt.points:
        points = np.array([[p.x, p.y] for p in prompt.points], np.float32)
        labels = np.array([p.label for p in prompt.points], np.int64)
        if not np.isfinite(points).all() or (points < 0).any() or (points[:, 0] > w).any() or (points[:, 1] > h).any():
            raise invalid(f"points must lie within the {w}x{h} frame")
        if not np.isin(labels, (0, 1)).all():
            raise invalid("point labels are 1 (foreground) or 0 (background)")
    if prompt.HasField("box"):
        b = prompt.box
        box = np.array([b.x0, b.y0, b.x1, b.y1], np.float32)
        if not np.isfinite(box).all() or b.x1 < b.x0 or b.y1 < b.y0:
            raise invalid("a box is x0 <= x1, y0 <= y1, finite")
    clear = not append or box is not None or prompt.replace_points
    return lambda: engine.add_points(prompt.object_id, points, labels, box, clear_old_points=clear)


def _decode_mask(m: pb.Mask, size) -> np.ndarray:
    h, w = size
    if (m.height, m.width) != (h, w):
        raise invalid(f"a mask prompt of {m.width}x{m.height}; this session's frames are {w}x{h}")
    which = m.WhichOneof("data")
    try:
        if which == "bitmap":
            if len(m.bitmap) != (h * w + 7) // 8:
                raise invalid(f"a {w}x{h} bitmap mask is {(h * w + 7) // 8} bytes, not {len(m.bitmap)}")
            return mask_lib.decode_bitmap(m.bitmap, h, w).astype(bool)
        if which == "png":
            from PIL import Image

            with Image.open(io.BytesIO(m.png)) as header:  # the size before any pixel is decoded
                if header.size != (w, h):
                    raise invalid(f"mask prompt data is {header.size[0]}x{header.size[1]}, not {w}x{h}")
            out = mask_lib.decode_png(m.png).astype(bool)
        else:  # COCO RLE is not read: its decoder trusts the counts it is given
            raise invalid("a mask prompt carries bitmap or png data")
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - undecodable mask data is the caller's error
        raise invalid(f"mask prompt data cannot be decoded as {which}: {exc.__class__.__name__}") from None
    if out.shape != (h, w):
        raise invalid(f"mask prompt data is {out.shape[1]}x{out.shape[0]}, not {w}x{h}")
    return out


async def _frame(live, req, results, run, dropped: int) -> pb.TrackResponse:
    engine, fmt = live.engine, live.mask_format

    def build() -> pb.TrackedFrame:
        frame = pb.TrackedFrame(frame_index=engine.frame, image_id=live.image_id, dropped_frames=dropped)
        h, w = engine.original_size
        for r in results:  # one object's full-size mask at a time
            o = frame.objects.add(object_id=r.object_id, object_score=r.score, visible=r.visible,
                                  predicted_iou=r.iou)
            fill_mask(o.mask, engine.masks([r])[0], fmt, w, h)
        return frame
    return pb.TrackResponse(sequence=req.sequence, frame=await run(build))


def fill_mask(m: pb.Mask, binary: np.ndarray, fmt: int, w: int, h: int) -> None:
    """A mask message from a row-major (H, W) bool mask, in the format asked for."""
    m.width, m.height = w, h
    m.area = int(np.count_nonzero(binary))
    m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height = mask_lib.bbox_xywh(binary)
    if fmt in (pb.MASK_FORMAT_UNSPECIFIED, pb.MASK_FORMAT_COCO_RLE):
        m.rle.counts = mask_lib.encode_rle_transposed(np.ascontiguousarray(binary.T))
    elif fmt == pb.MASK_FORMAT_PNG:
        m.png = mask_lib.encode_png(binary)
    elif fmt == pb.MASK_FORMAT_BITMAP:
        m.bitmap = mask_lib.encode_bitmap(binary)
