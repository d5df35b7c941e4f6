"""StreamSegment: frames, image_ids and prompts in order, each message answered on its own; a failure is
reported on its message and the stream goes on (a revoked key ends it); a prompt marked drop_if_stale is
skipped when a newer one waits behind it. Every message that does work is one request for the rate."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc

from maskserve.engines import prompts as prompt_lib

from .. import failures
from ..errors import Reason
from ..failures import ServiceError
from ..proto import pb


class Inbox:
    """A stream's requests read ahead as they arrive, so that a prompt can see whether newer ones wait; at most
    `limit` of them (beyond that the reader waits, and HTTP/2 flow control holds the sender back)."""

    def __init__(self, requests, limit: int = 32) -> None:
        self.waiting: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.limit = limit
        self.ended = False
        self.reader = asyncio.create_task(self._read(requests))

    async def _read(self, requests) -> None:
        try:
            async for req in requests:
                self.waiting.append(req)
                self.arrived.set()
                if len(self.waiting) >= self.limit:
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.ended = True
            self.arrived.set()

    async def next(self):
        """The next request, or None at the end of the stream."""
        while not self.waiting:
            if self.ended:
                if self.reader.done() and not self.reader.cancelled() and self.reader.exception():
                    raise self.reader.exception()
                return None
            self.arrived.clear()
            await self.arrived.wait()
        req = self.waiting.popleft()
        if len(self.waiting) < self.limit:
            self.room.set()
        return req

    def newer_waiting(self, *items: str) -> bool:
        """Whether a request of one of these kinds (`item` oneof names) already waits behind this one."""
        return any(r.WhichOneof("item") in items for r in self.waiting)

    def newer_frame_waiting(self) -> bool:
        """Whether the next request waiting is a newer frame (TrackObjects: a prompt sent after this frame is
        about this frame, so it is not skipped past)."""
        return bool(self.waiting) and self.waiting[0].WhichOneof("item") in ("frame", "image_id")

    def close(self) -> None:
        self.reader.cancel()


async def handle(service, requests, call):
    inbox = Inbox(requests)
    current: str | None = None  # the image the stream's prompts are about
    try:
        while (req := await inbox.next()) is not None:
            started = time.perf_counter()
            call.recheck()  # a revoked key ends the stream (UNAUTHENTICATED), it gets no more work done
            try:
                response, current = await _answer(service, req, inbox, call, current)
                code = grpc.StatusCode.OK
            except Exception as exc:  # noqa: BLE001 - reported on the message, the stream goes on
                code, error = failures.stream_error(exc, call.tenant)
                response = pb.StreamSegmentResponse(sequence=req.sequence, error=error)
            yield response
            call.message_done(code, started)
    finally:
        inbox.close()


async def _answer(service, req, inbox: Inbox, call, current: str | None):
    """One message's answer, and the image the stream is about after it."""
    item = req.WhichOneof("item")
    if item == "prompt" and req.drop_if_stale and inbox.newer_waiting("prompt"):
        return pb.StreamSegmentResponse(sequence=req.sequence, dropped=True), current
    service.quotas.admit(call.caller)  # every message that does work is a request for the rate
    if item == "frame":
        current, _, _ = await service.embeddings.image_for(call.caller, req.frame, call.context)
        return pb.StreamSegmentResponse(sequence=req.sequence, image_id=current), current
    if item == "image_id":
        if not await service.embeddings.renew(call.caller, service.embeddings.ref(call.caller, req.image_id)):
            raise failures.unknown_image(req.image_id)
        return pb.StreamSegmentResponse(sequence=req.sequence, image_id=req.image_id), req.image_id
    if item == "prompt":
        if current is None:
            raise ServiceError(Reason.NO_IMAGE_YET, "send a frame or an image_id before prompts")
        (result,) = await service.segment(call.caller, current, [req.prompt], req.options)
        return pb.StreamSegmentResponse(sequence=req.sequence, result=result), current
    raise prompt_lib.PromptError("empty stream message: set frame, image_id or prompt")
