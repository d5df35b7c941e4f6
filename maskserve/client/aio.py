"""`AsyncClient`: the asyncio twin of `Client`."""

from __future__ import annotations

import grpc

from maskserve.engines.automatic import MaskSet, Options
from maskserve.v1 import maskserve_pb2 as pb
from maskserve.v1 import maskserve_pb2_grpc as pb_grpc

from . import everything
from .base import CHANNEL_OPTIONS, ClientBase, ConceptAnswer, everything_page, typed
from .messages import image_message


class AsyncClient(ClientBase):
    """The asyncio twin of `Client`."""

    def __init__(self, target: str, timeout: float = 60.0, *, api_key: str | None = None, tls: bool | None = None,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, mask_format: str | None = None) -> None:
        self._connect(target, timeout, api_key, tls, root_certificates, certificate_chain, private_key,
                      mask_format, grpc.aio)
        self._blocking = None  # a blocking channel for reading RemoteLogits (NumPy cannot await)

    @typed
    async def encode(self, image, image_format: str = "RGB", wait: bool = True) -> str:
        reply = await self.stub.EncodeImage(
            pb.EncodeImageRequest(image=image_message(image, image_format), wait=wait), timeout=self.timeout,
            metadata=self.metadata)
        return reply.image_id

    async def set_image(self, image, image_format: str = "RGB") -> None:
        self.image_id = await self.encode(image, image_format)

    @typed
    async def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        request = self._predict_request(point_coords, point_labels, box, mask_input, multimask_output, return_logits)
        response = await self.stub.SegmentPrompt(request, timeout=self.timeout, metadata=self.metadata)
        if self._info is None:
            self._info = await self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout,
                                                      metadata=self.metadata)

        @typed
        def fetch():  # from NumPy, which cannot await: on a blocking channel of its own
            if self._blocking is None:
                channel = (grpc.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS)
                           if self.credentials else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS))
                self._blocking = (channel, pb_grpc.SegmenterStub(channel))
            return self._logits_of(self._blocking[1].SegmentPrompt(self._logits_request(request),
                                                                   timeout=self.timeout, metadata=self.metadata))
        return self._unpack(response, return_logits, self._info, fetch)

    @typed
    async def segment_everything(self, image, options: Options | None = None, *, image_format: str = "RGB",
                                 progress=None, timeout: float = 3600.0) -> MaskSet:
        """`Client.segment_everything`, awaited."""
        responses = self.stub.SegmentEverything(self._everything_request(image, options, image_format),
                                                timeout=timeout, metadata=self.metadata)
        pages = [everything_page(r, progress) async for r in responses]
        return everything.from_pages(p for p in pages if p is not None)[0]

    @typed
    async def segment_concept(self, phrases, exemplars=(), *, image=None, confidence_threshold: float | None = None,
                              image_format: str = "RGB") -> list[ConceptAnswer]:
        """`Client.segment_concept`, awaited."""
        request = self._concept_request(image, phrases, exemplars, confidence_threshold, image_format)
        return self._concepts_of(await self.stub.SegmentConcept(request, timeout=self.timeout,
                                                                metadata=self.metadata))

    async def close(self) -> None:
        if self._blocking is not None:
            self._blocking[0].close()
        await self.channel.close()
