"""`Client`: the `SamPredictor` interface against a running decoder service, blocking."""

from __future__ import annotations

import grpc

from maskserve.engines.automatic import MaskSet, Options
from maskserve.v1 import maskserve_pb2 as pb

from . import everything
from .base import ClientBase, ConceptAnswer, everything_page, typed
from .messages import image_message


class Client(ClientBase):
    """Blocking client. `set_image` encodes (once per distinct image, on the encoder pool), then `predict`
    answers like `SamPredictor.predict`: masks (C, H, W), iou_predictions (C,), low_res_logits (C, M, M)."""

    def __init__(self, target: str, timeout: float = 60.0, *, api_key: str | None = None, tls: bool | None = None,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, mask_format: str | None = None) -> None:
        self._connect(target, timeout, api_key, tls, root_certificates, certificate_chain, private_key,
                      mask_format, grpc)

    @typed
    def encode(self, image, image_format: str = "RGB", wait: bool = True) -> str:
        reply = self.stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image, image_format), wait=wait),
                                      timeout=self.timeout, metadata=self.metadata)
        return reply.image_id

    def set_image(self, image, image_format: str = "RGB") -> None:
        """As `SamPredictor.set_image`; `image` is an (H, W, 3) uint8 array (RGB, or BGR with image_format),
        an image file's bytes or its path (JPEG, PNG, WebP: decoded by the service, upright by EXIF)."""
        self.image_id = self.encode(image, image_format)

    @typed
    def segment_everything(self, image, options: Options | None = None, *, image_format: str = "RGB",
                           progress=None, timeout: float = 3600.0) -> MaskSet:
        """The automatic generator on the service for an image (array, file bytes or path) or an image_id;
        `progress(stage, done, total)` is called as the service reports it. A full-size model with crops
        takes minutes on a CPU, hence its own, longer timeout."""
        request = self._everything_request(image, options, image_format)
        responses = self.stub.SegmentEverything(request, timeout=timeout, metadata=self.metadata)
        pages = (everything_page(r, progress) for r in responses)
        return everything.from_pages(p for p in pages if p is not None)[0]

    @typed
    def segment_concept(self, phrases, exemplars=(), *, image=None, confidence_threshold: float | None = None,
                        image_format: str = "RGB") -> list[ConceptAnswer]:
        """Every instance of each phrase (SAM 3), with the exemplar boxes — (x0, y0, x1, y1) pixels, or
        ((x0, y0, x1, y1), positive) — on `image` (an image_id, array, file bytes or path; default the image of
        `set_image`); one answer per phrase, or one for the exemplars alone when no phrase is given."""
        request = self._concept_request(image, phrases, exemplars, confidence_threshold, image_format)
        return self._concepts_of(self.stub.SegmentConcept(request, timeout=self.timeout, metadata=self.metadata))

    @typed
    def model_info(self) -> pb.ModelInfo:
        if self._info is None:
            self._info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout,
                                                metadata=self.metadata)
        return self._info

    @typed
    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """As `SamPredictor.predict`; `low_res_logits` stays on the service until read (see RemoteLogits)."""
        request = self._predict_request(point_coords, point_labels, box, mask_input, multimask_output, return_logits)
        response = self.stub.SegmentPrompt(request, timeout=self.timeout, metadata=self.metadata)

        @typed
        def fetch():
            return self._logits_of(self.stub.SegmentPrompt(self._logits_request(request), timeout=self.timeout,
                                                           metadata=self.metadata))
        return self._unpack(response, return_logits, self.model_info(), fetch)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
