"""The servicer built from parts of the test's choosing, with no process, no Redis and no network: the store is
a dict, the caller an argument. Its answers equal the in-process Predictor's, and every concern (`calls`)
applies to every RPC of the proto alike."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from maskserve import engines
from maskserve.engines.predictor import Predictor
from maskserve.engines.prompts import PromptError
from maskserve.service import access, calls, quotas, refinement, rpcs, store
from maskserve.service.config import Settings
from maskserve.service.decoding import Decoding
from maskserve.service.embeddings import Embeddings
from maskserve.service.failures import unknown_image
from maskserve.service.proto import pb
from maskserve.service.servicer import Segmenter


class DictStore:
    """Embeddings as `Embeddings` serves them, from a dict: what the servicer needs of a store."""

    ref = staticmethod(Embeddings.ref)
    target = Embeddings.target

    def __init__(self) -> None:
        self.items: dict[str, store.StoredEmbedding] = {}

    async def require(self, caller, image_id):
        ref = self.ref(caller, image_id)
        if ref not in self.items:
            raise unknown_image(image_id)
        return ref, self.items[ref]


class KeyRedis:
    """The one thing refinement asks of Redis: the deployment's handle key."""

    def __init__(self) -> None:
        self.data = {}

    async def set(self, k, v, nx=False):
        self.data.setdefault(k, v) if nx else self.data.__setitem__(k, v)

    async def get(self, k):
        return self.data.get(k)


class Context:
    """The little of a gRPC context the concerns read."""

    def __init__(self, metadata=()) -> None:
        self.metadata = tuple(metadata)
        self.aborted = None

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        return {}

    async def abort_with_status(self, status):
        self.aborted = status
        raise grpc.aio.AbortError()


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    settings = Settings()
    model = engines.load(tiny_model_dir, encoder=False)
    pool = ThreadPoolExecutor(2)
    yield Segmenter(settings, model.manifest, DictStore(), Decoding(settings, tiny_model_dir, model),
                    refinement.Refinements(KeyRedis(), 8), pool, pool, quotas.Local())
    pool.shutdown()


def test_segment_prompt_without_processes_answers_as_the_predictor(service, tiny_model_dir):
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    local = Predictor(tiny_model_dir)
    local.set_image(image)
    tenant = access.Caller("acme", "acme-key", frozenset({"*"}), access.Limits())
    service.embeddings.items[f"acme/{'a' * 32}"] = store.StoredEmbedding(local.get_image_arrays(),
                                                                         service.version, (120, 160))
    request = pb.SegmentPromptRequest(image_id="a" * 32, prompts=[pb.Prompt(points=[pb.Point(x=50, y=60, label=1)])],
                                      options=pb.OutputOptions(mask_format=pb.MASK_FORMAT_BITMAP))
    call = calls.Call("SegmentPrompt", Context(), streaming=False, per_message=False, caller=tenant)
    reply = asyncio.run(rpcs.handler("SegmentPrompt")(service, request, call))
    masks, scores, _ = local.predict(np.array([[50.0, 60.0]]), np.array([1]))
    assert len(reply.results[0].masks) == 3 and reply.model_version == service.version
    for m, expected, score in zip(reply.results[0].masks, masks, scores):
        bits = np.unpackbits(np.frombuffer(m.bitmap, np.uint8))[:120 * 160].reshape(120, 160).astype(bool)
        assert np.count_nonzero(bits != expected) <= 2 and abs(m.predicted_iou - score) < 1e-5
    # the caller is an argument: another tenant names the same id and finds nothing
    other = calls.Call("SegmentPrompt", Context(), streaming=False, per_message=False,
                       caller=access.Caller("other", "k", frozenset({"*"}), access.Limits()))
    with pytest.raises(Exception, match="no embedding for image_id"):
        asyncio.run(rpcs.handler("SegmentPrompt")(service, request, other))
    # no image and no image_id: one refusal naming the field, before any work
    with pytest.raises(PromptError, match="give an image_id") as refused:
        asyncio.run(rpcs.handler("SegmentPrompt")(service, pb.SegmentPromptRequest(prompts=request.prompts), call))
    assert refused.value.field == "image_id"


def test_every_rpc_of_the_proto_has_its_module_and_gets_every_concern(service):
    methods = [m.name for m in pb.DESCRIPTOR.services_by_name["Segmenter"].methods]
    assert {rpcs.module_name(m) for m in methods} == {"encode_image", "segment_prompt", "stream_segment",
                                                       "segment_everything", "get_model_info", "track_objects",
                                                       "get_embedding", "segment_concept"}
    for m in methods:
        assert callable(rpcs.handler(m))

    async def refused(rpc: str):  # no credentials: each RPC is refused the same way, before its handler runs
        key_file = type("Keys", (), {"authenticate": lambda self, md, ac: (_ for _ in ()).throw(
            access.AccessError(False, "this call has no credentials"))})()
        concerns = [calls.Tracing(), calls.Metrics(), calls.Errors(),
                    calls.Authentication(key_file, access.NOBODY), calls.Admission(quotas.Local())]
        call = calls.Call(rpc, Context(), streaming=False, per_message=False)
        ran = []
        with pytest.raises(grpc.aio.AbortError):
            async with calls.chain(concerns, call):
                ran.append(rpc)
        return call, ran

    for m in methods:
        call, ran = asyncio.run(refused(m))
        assert call.code == grpc.StatusCode.UNAUTHENTICATED and not ran
        assert call.context.aborted.code == grpc.StatusCode.UNAUTHENTICATED
