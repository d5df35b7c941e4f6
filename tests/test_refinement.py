"""The drop-in client and refinement by reference: `Client.predict` matches the reference `SamPredictor`
through the wire with logits handles and with logits data alike; handles resolve on any replica, are scoped
to their image and tenant, and the logits travel only when read."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest

from conftest import report
from test_parity import IOU_MIN, SCORE_TOL, _iou, _prompt_cases

from maskserve.engines.prompts import PromptError
from maskserve.service import refinement
from maskserve.client import AsyncClient, Client, image_message, prompt_message
from maskserve.v1 import internal_pb2
from maskserve.service.proto import pb, pb_grpc
from maskserve.client import RemoteLogits
from maskserve.service.stack import LocalStack, start_role, stop, wait_serving, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(log_dir=tmp_path_factory.mktemp("refine")) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from segment_anything import SamPredictor

    from maskserve.build.checkpoint import load_model

    return SamPredictor(load_model(tiny_checkpoint, "tiny"))


def check_client_parity(model_name: str, target: str, reference, images: dict) -> None:
    """The parity cases of test_parity, through `Client.predict`: the refinement once by handle (the loop as
    users write it), once by data, each against the reference refining its own answer."""
    worst_iou, worst_score = (1.0, ""), (0.0, "")
    with Client(target) as by_handle, Client(target, mask_format="rle") as by_data:
        for name, image in images.items():
            reference.set_image(image)
            by_handle.set_image(image)
            by_data.set_image(image)
            h, w = image.shape[:2]
            previous = {}
            for case, kwargs in _prompt_cases(h, w):
                answers = {}
                for way, client in (("reference", None), ("handle", by_handle), ("data", by_data)):
                    args = dict(kwargs)
                    if case == "refine":
                        args["mask_input"] = previous[way]
                    answers[way] = (reference if client is None else client).predict(**args)
                for way in ("handle", "data"):
                    masks, scores, low = answers[way]
                    for k in range(len(masks)):
                        iou = _iou(answers["reference"][0][k], masks[k])
                        if iou < worst_iou[0]:
                            worst_iou = (iou, f"{name} {case} by {way} mask {k}")
                    delta = float(np.abs(answers["reference"][1] - scores).max())
                    if delta > worst_score[0]:
                        worst_score = (delta, f"{name} {case} by {way}")
                best = {way: int(np.argmax(a[1])) for way, a in answers.items()}
                previous = {"reference": answers["reference"][2][[best["reference"]]],
                            "handle": answers["handle"][2][best["handle"]][None],  # the loop as users write it
                            "data": np.asarray(answers["data"][2])[[best["data"]]]}
            low = answers["handle"][2]
            assert isinstance(low, RemoteLogits) and not low._cached, "the refinement loop fetched logits"
            assert low.shape == answers["reference"][2].shape and low.dtype == np.float32
            np.testing.assert_allclose(np.asarray(low), answers["reference"][2], atol=2e-3)  # read on demand
    report(f"Client.predict vs SamPredictor ({model_name}, through the wire, handles and data): worst mask IoU "
           f"{worst_iou[0]:.6f} ({worst_iou[1]}); worst |Δ predicted IoU| {worst_score[0]:.2e} ({worst_score[1]})")
    assert worst_iou[0] >= IOU_MIN, worst_iou
    assert worst_score[0] <= SCORE_TOL, worst_score


def test_client_predict_matches_the_reference_with_handles_and_with_data(stack, reference, photos):
    check_client_parity("tiny", stack.target, reference,
                        {k: photos[k] for k in ("coffee_400x600", "small_23x41", "tall_640x25")})


@pytest.mark.slow
def test_full_size_vit_b_client_matches_the_reference(vit_b_random, photos, tmp_path):
    from segment_anything import SamPredictor

    from maskserve.build.checkpoint import load_model

    checkpoint, model_dir = vit_b_random
    with LocalStack(str(model_dir), log_dir=tmp_path) as vit_b:
        check_client_parity("vit_b (seeded random weights)", vit_b.target,
                            SamPredictor(load_model(checkpoint, "vit_b")),
                            {k: photos[k] for k in ("coffee_400x600", "wide_18x600")})


def test_a_handle_resolves_on_another_replica_and_only_for_its_image(stack, photos):
    """A second decoder (an empty process cache) makes the handle's logits again from the embedding."""
    port = free_port()
    other = start_role("decoder", {**stack.env("decoder"), "MASKSERVE_GRPC_PORT": str(port),
                                   "MASKSERVE_METRICS_PORT": "0"}, stack.log_dir / "decoder2.log")
    try:
        wait_serving(f"127.0.0.1:{port}", proc=other)
        image = photos["chelsea_300x451"]
        with Client(stack.target) as a, Client(f"127.0.0.1:{port}") as b:
            a.set_image(image)
            b.image_id = a.image_id
            first = a.predict(np.array([[200.0, 150.0]]), np.array([1]))
            best = int(np.argmax(first[1]))
            by_handle = b.predict(np.array([[120.0, 100.0]]), np.array([1]), mask_input=first[2][best][None],
                                  multimask_output=False)
            by_data = a.predict(np.array([[120.0, 100.0]]), np.array([1]),
                                mask_input=np.asarray(first[2])[[best]], multimask_output=False)
            assert np.count_nonzero(by_handle[0] != by_data[0]) <= 2
            np.testing.assert_allclose(by_handle[1], by_data[1], atol=1e-5)
            # a chain: each click refines the previous one, alternating replicas
            low = by_handle[2]
            for i, client in enumerate((a, b, a)):
                masks_, scores, low = client.predict(np.array([[100.0 + 10 * i, 90.0]]), np.array([1]),
                                                     mask_input=low[[0]], multimask_output=False)
            assert masks_.shape == (1, 300, 451)

            stub = a.stub
            handle = first[2].handle
            a.set_image(photos["coffee_400x600"])  # a handle of the chelsea image, used on another image
            for mask_from, message in ((pb.MaskFrom(handle=handle), "belongs to image"),
                                       (pb.MaskFrom(handle=b"\x0a\x03abc"), "is not a handle"),
                                       (pb.MaskFrom(handle=b"garbage\xff"), "is not a handle")):
                request = pb.SegmentPromptRequest(image_id=a.image_id, prompts=[pb.Prompt(
                    points=[pb.Point(x=10, y=10, label=1)], mask_from=mask_from)])
                with pytest.raises(grpc.RpcError) as info:
                    stub.SegmentPrompt(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
            request = pb.SegmentPromptRequest(image_id=b.image_id, prompts=[pb.Prompt(
                points=[pb.Point(x=10, y=10, label=1)], mask_from=pb.MaskFrom(handle=handle, output_index=3))])
            with pytest.raises(grpc.RpcError) as info:
                stub.SegmentPrompt(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has 3 masks" in info.value.details()
    finally:
        stop(other)


def test_stream_refines_its_last_answer_by_handle(stack, photos):
    image = photos["coffee_400x600"]
    with grpc.insecure_channel(stack.target) as channel, Client(stack.target) as client:
        stub = pb_grpc.SegmenterStub(channel)
        client.set_image(image)
        first = client.predict(np.array([[300.0, 200.0]]), np.array([1]))
        expected = client.predict(np.array([[320.0, 210.0]]), np.array([1]), multimask_output=False,
                                  mask_input=np.asarray(first[2])[[int(np.argmax(first[1]))]])

        def requests():
            yield pb.StreamSegmentRequest(sequence=1, frame=image_message(image))
            yield pb.StreamSegmentRequest(sequence=2, prompt=prompt_message([[300, 200]], [1]),
                                          options=pb.OutputOptions(best_mask_only=True))
            reply = replied.get(timeout=30)  # the stream's second answer, read below
            mask = reply.result.masks[0]
            yield pb.StreamSegmentRequest(sequence=3, prompt=pb.Prompt(
                points=[pb.Point(x=320, y=210, label=1)],
                mask_from=pb.MaskFrom(handle=reply.result.logits_handle, output_index=mask.output_index)),
                options=pb.OutputOptions(single_mask=True, mask_format=pb.MASK_FORMAT_BITMAP))

        replied: queue.Queue = queue.Queue()
        replies = stub.StreamSegment(requests(), timeout=60)
        assert next(replies).image_id == client.image_id
        answer = next(replies)
        replied.put(answer)
        assert answer.result.masks[0].output_index == int(np.argmax(first[1]))
        refined = next(replies)
        assert not refined.HasField("error"), refined.error.message
        from maskserve.client import decode_mask

        assert np.count_nonzero(decode_mask(refined.result.masks[0]) != expected[0][0]) <= 2


def test_async_client_refines_by_handle_and_reads_logits_on_demand(stack, photos, tiny_model_dir):
    from maskserve import Predictor

    image = photos["chelsea_300x451"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)

    async def main():
        client = AsyncClient(stack.target)
        try:
            await client.set_image(image)
            masks_, scores, low = await client.predict(np.array([[200.0, 150.0]]), np.array([1]))
            best = int(np.argmax(scores))
            refined = await client.predict(np.array([[120.0, 100.0]]), np.array([1]), mask_input=low[best][None],
                                           multimask_output=False)
            fetched_before_read = bool(low._cached)
            return low, np.asarray(low), refined, best, fetched_before_read
        finally:
            await client.close()

    low, read, refined, best, fetched_before_read = asyncio.run(main())
    assert not fetched_before_read
    expected = local.predict(np.array([[200.0, 150.0]]), np.array([1]))
    np.testing.assert_allclose(read, expected[2], atol=1e-4)
    again = local.predict(np.array([[120.0, 100.0]]), np.array([1]), mask_input=expected[2][[best]],
                          multimask_output=False)
    assert np.count_nonzero(refined[0] != again[0]) <= 2


def test_remote_logits_views():
    fetched = []
    data = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)

    def fetch():
        fetched.append(1)
        return data

    low = RemoteLogits(fetch, b"h", 3, 8)
    assert low.shape == (3, 8, 8) and len(low) == 3 and low.dtype == np.float32 and not fetched
    for view, index in ((low[1][None], 1), (low[[2]], 2), (low[0:1], 0), (low[2], 2), (low[None, 1][0], 1)):
        assert view.mask_index() == index, view
    for view in (low, low[1][::-1], low[1][:, ::-1], low[1, :4], low[[0, 1]]):
        assert view.mask_index() is None
    assert not fetched
    np.testing.assert_array_equal(np.asarray(low[1][None]), data[1][None])
    np.testing.assert_array_equal(low[1] + 1, data[1] + 1)
    assert int(np.argmax(low[0])) == int(np.argmax(data[0]))
    np.testing.assert_array_equal(low[1].T, data[1].T)
    assert low.max() == data.max() and low[2].astype(np.float64).dtype == np.float64
    assert len(fetched) == 1  # views share one fetch


def test_handles_are_signed_remade_within_a_budget_and_cut_when_too_long():
    class FakeRedis:
        def __init__(self):
            self.data = {}

        async def get(self, k):
            return self.data.get(k)

        async def set(self, k, v, nx=False):
            if not (nx and k in self.data):
                self.data[k] = v

    made = []

    async def make(prompt, multimask):
        made.append(prompt)
        return np.full((1, 4, 4), len(made), np.float32)

    from maskserve.service.decoding import to_prompt as _to_prompt

    image, ref = "0" * 32, "t/" + "0" * 32

    async def chain(r, n):
        handle = b""
        for i in range(n):
            p = pb.Prompt(points=[pb.Point(x=i, y=i, label=1)])
            if handle:
                p.mask_from.handle = handle
            handle = await r.handle(ref, image, p, True)
        return handle

    async def resolve(r, handle, budget=None):
        return await r.resolve(ref, image, pb.MaskFrom(handle=handle), make, _to_prompt,
                               budget or [refinement.MAX_REMAKE])

    async def main():
        shared = FakeRedis()  # the queue's Redis: both "replicas" share the handle key
        r = refinement.Refinements(shared, 8)
        handle = await chain(r, 3)
        out = await resolve(r, handle)
        assert len(made) == 3 and out.shape == (1, 4, 4)  # the chain made once, from its root
        assert made[1].mask_input is not None and made[0].mask_input is None
        await resolve(r, handle)
        assert len(made) == 3  # kept
        other = refinement.Refinements(shared, 8)
        budget = [2]
        with pytest.raises(refinement.HandleExpired):  # 3 runs needed, 2 left: refused before any work
            await resolve(other, handle, budget)
        assert len(made) == 3 and budget == [2]
        # a chain longer than a call may remake: its handle names the level below by hash only
        long = await chain(r, refinement.MAX_REMAKE + 2)
        assert len(long) < 40 * refinement.MAX_REMAKE  # the handle's size is bounded too
        assert refinement.Refinements.levels(long) > refinement.MAX_REMAKE
        made.clear()
        with pytest.raises(refinement.HandleExpired):
            await resolve(other, long)
        assert not made
        # forged, altered, or another tenant's handles are not ours
        recipe = internal_pb2.LogitsRecipe(image_id=image, prompt=pb.Prompt(points=[pb.Point(x=1, y=1, label=1)]),
                                 single_mask=True).SerializeToString()
        tampered = bytearray(handle)
        tampered[3] ^= 1
        for bad in (recipe, recipe + bytes(16), bytes(tampered), b"", b"x" * 5):
            with pytest.raises(PromptError, match="not a handle"):
                await resolve(r, bad)
        with pytest.raises(PromptError, match="not a handle"):
            await r.resolve("u/" + image, image, pb.MaskFrom(handle=handle), make, _to_prompt, [16])
        fresh_key = refinement.Refinements(FakeRedis(), 8)  # a deployment with another key
        with pytest.raises(PromptError, match="not a handle"):
            await resolve(fresh_key, handle)

    asyncio.run(main())
