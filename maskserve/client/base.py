"""What `Client` and `AsyncClient` share: the channel, requests built and answers read, typed errors."""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import grpc
import numpy as np

from maskserve.engines import families
from maskserve.limits import MAX_MESSAGE_MB
from maskserve.engines.automatic import Options
from maskserve.v1 import maskserve_pb2 as pb
from maskserve.v1 import maskserve_pb2_grpc as pb_grpc

from . import errors, everything
from .messages import decode_mask, image_message, is_image_id, prompt_message
from .remote_logits import RemoteLogits

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_MB * 2**20),
                   ("grpc.max_send_message_length", MAX_MESSAGE_MB * 2**20)]


def typed(method):
    """Failed calls raise `maskserve.client.errors` types (still grpc.RpcErrors) with the service's details."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def wrapper(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except grpc.RpcError as exc:
                raise errors.from_rpc_error(exc) from None
    else:
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except grpc.RpcError as exc:
                raise errors.from_rpc_error(exc) from None
    return wrapper


MASK_FORMATS = {"bits": pb.MASK_FORMAT_BITMAP, "rle": pb.MASK_FORMAT_COCO_RLE, "png": pb.MASK_FORMAT_PNG}
LOOPBACK = ("127.", "localhost", "[::1]", "::1", "unix:")


def default_mask_format(target: str) -> str:
    """Chosen by measurement (docs/performance.md): packed bits decode 12-20x faster than COCO RLE and cost the
    server less, so on this machine they win by 2-5 ms a call; but smooth masks — what trained weights give —
    are 30x smaller as RLE (9 KB against 295 KB for three 768x1024 masks), which wins on any real network."""
    return "bits" if target.startswith(LOOPBACK) else "rle"


class ClientBase:
    def _connect(self, target: str, timeout: float, api_key: str | None, tls: bool | None,
                 root_certificates: bytes | None, certificate_chain: bytes | None, private_key: bytes | None,
                 mask_format: str, channels) -> None:
        """TLS when asked (`tls=True`) or implied by a CA or a client pair; the API key goes with every call
        as `authorization: Bearer <key>` (over plaintext too, for a local stack with authentication on)."""
        mask_format = mask_format or default_mask_format(target)
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
        self.credentials = None
        if tls or (tls is None and (root_certificates or certificate_chain)):
            self.credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = channels.secure_channel(target, self.credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = channels.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.target = target
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.mask_format = MASK_FORMATS[mask_format]
        self.image_id: str | None = None
        self._info = None

    def _predict_request(self, point_coords, point_labels, box, mask_input, multimask_output, return_logits):
        if self.image_id is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        prompt = prompt_message(point_coords, point_labels, box, mask_input)
        # Logits travel now only when needed now: to upscale them here, or when the answer will have no handle
        # (its prompt carried mask data); otherwise they stay on the service until read.
        eager = return_logits or prompt.HasField("mask_input")
        return pb.SegmentPromptRequest(image_id=self.image_id, prompts=[prompt], options=pb.OutputOptions(
            single_mask=not multimask_output, return_low_res_logits=eager,
            mask_format=pb.MASK_FORMAT_NONE if return_logits else self.mask_format))

    @staticmethod
    def _logits_request(request: pb.SegmentPromptRequest) -> pb.SegmentPromptRequest:
        """The same prompt again, for its logits alone (the service makes them; nothing else is sent)."""
        again = pb.SegmentPromptRequest()
        again.CopyFrom(request)
        again.options.return_low_res_logits, again.options.mask_format = True, pb.MASK_FORMAT_NONE
        return again

    @staticmethod
    def _logits_of(response) -> np.ndarray:
        return np.stack([np.frombuffer(m.low_res_logits.data, "<f4").reshape(m.low_res_logits.side, -1)
                         for m in response.results[0].masks])

    @staticmethod
    def _everything_request(image, options: Options | None, image_format: str) -> pb.SegmentEverythingRequest:
        request = pb.SegmentEverythingRequest(options=everything.options_to_proto(options or Options()))
        if is_image_id(image) and not os.path.exists(image):
            request.image_id = image
        else:
            request.image.CopyFrom(image_message(image, image_format))
        return request

    def _concept_request(self, image, phrases, exemplars, confidence_threshold, image_format):
        """`image` an image_id (the default: the image of `set_image`), an array, file bytes or path."""
        image = self.image_id if image is None else image
        if image is None:
            raise RuntimeError("give an image, or set one with .set_image(...) first")
        request = pb.SegmentConceptRequest(phrases=[phrases] if isinstance(phrases, str) else list(phrases or ()),
                                           options=pb.OutputOptions(mask_format=self.mask_format))
        if is_image_id(image) and not os.path.exists(image):
            request.image_id = image
        else:
            request.image.CopyFrom(image_message(image, image_format))
        for e in exemplars or ():
            box, positive = e if len(e) == 2 else (e, True)  # (x0, y0, x1, y1), or (that box, positive)
            x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
            request.exemplars.add(box=pb.Box(x0=x0, y0=y0, x1=x1, y1=y1), negative=not positive)
        if confidence_threshold is not None:
            request.confidence_threshold = confidence_threshold
        return request

    @staticmethod
    def _concepts_of(response) -> list[ConceptAnswer]:
        return [ConceptAnswer(r.phrase or None, r.presence,
                              np.array([[i.box.x0, i.box.y0, i.box.x1, i.box.y1] for i in r.instances],
                                       np.float32).reshape(-1, 4),
                              np.array([i.score for i in r.instances], np.float32),
                              [decode_mask(i.mask) for i in r.instances], response.image_id)
                for r in response.results]

    def _unpack(self, response, return_logits, info, fetch):
        """`SamPredictor.predict`'s three arrays; `fetch()` gets the low-res logits when they were left behind."""
        result = response.results[0]
        ious = np.array([m.predicted_iou for m in result.masks], np.float32)
        if result.masks[0].HasField("low_res_logits"):
            low = self._logits_of(response)
        else:
            low = RemoteLogits(fetch, result.logits_handle, len(result.masks), info.low_res_side)
        if return_logits:
            h, w = result.masks[0].height, result.masks[0].width
            family = families.get(info.family)  # an older service leaves it empty: SAM
            return family.upscale_logits(np.asarray(low), (h, w), info.image_size, info.low_res_side), ious, low
        return np.stack([decode_mask(m) for m in result.masks]), ious, low


@dataclass
class ConceptAnswer:
    """One phrase's instances (SegmentConcept): boxes (n, 4) x0, y0, x1, y1 pixels, scores (n,), masks (n, H, W)."""

    phrase: str | None  # None: the exemplars alone
    presence: float
    boxes: np.ndarray
    scores: np.ndarray
    mask_list: list
    image_id: str

    @property
    def masks(self) -> np.ndarray:
        if not self.mask_list:
            return np.zeros((0, 0, 0), bool)
        return np.stack(self.mask_list)


def everything_page(response, progress):
    """The page a SegmentEverything response carries, or None after passing its progress to `progress`."""
    if response.WhichOneof("payload") == "masks":
        return response.masks
    if progress is not None:
        progress(response.progress.stage, response.progress.done, response.progress.total)
    return None
