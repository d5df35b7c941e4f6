"""TrackObjects through real processes: frames encoded by the encoder pool, tracked by a decoder, the session
resumed on a second decoder replica from its Redis checkpoint — equal to SAM2VideoPredictor throughout; bad
input, other tenants, limits and frame dropping each answered with their status, the session unharmed."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from maskserve import VideoTracker
from maskserve.client import Client, errors
from maskserve.service import access
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack, free_port, start_role, stop, wait_serving

from video import SCENARIO, compare

KEYS = {t: access.new_key() for t in ("a", "b", "small")}


@pytest.fixture(scope="module")
def stack(sam2_tiny_random, tmp_path_factory):
    d = tmp_path_factory.mktemp("track-stack")
    doc = {"tenants": {"a": {}, "b": {}, "small": {"embedding_mb": 1}},
           "keys": [{"name": f"{t}-key", "tenant": t, "sha256": access.key_hash(k), "rpcs": ["*"]}
                    for t, k in KEYS.items()]}
    (d / "access.json").write_text(json.dumps(doc))
    env = {"MASKSERVE_AUTH_FILE": str(d / "access.json"), "MASKSERVE_TRACK_MAX_OBJECTS": "4",
           "MASKSERVE_TRACK_CHECKPOINT_S": "0", "MASKSERVE_TRACK_SESSIONS": "2", "MASKSERVE_TRACK_IDLE_S": "20"}
    with LocalStack(model_dir=str(sam2_tiny_random[1]), log_dir=d, extra_env=env, http_port=free_port()) as s:
        yield s


@pytest.fixture(scope="module")
def second_replica(stack):
    """Another decoder on the same Redis: where a session resumes."""
    port = free_port()
    env = {**stack.env("decoder"), "MASKSERVE_GRPC_PORT": str(port), "MASKSERVE_METRICS_PORT": "0", "MASKSERVE_HTTP_PORT": "0"}
    proc = start_role("decoder", env, stack.log_dir / "decoder-2.log")
    target = f"127.0.0.1:{port}"
    wait_serving(target, proc=proc)
    yield target
    stop(proc)


def run_remote(tracker: VideoTracker, frames, steps, out: dict) -> None:
    for n in steps:
        step = SCENARIO[n]
        if step[0] == "frame":
            _, ids, masks = tracker.track(frames[step[1]])
        elif step[0] == "box":
            _, ids, masks = tracker.add_new_points_or_box(step[1], box=step[2])
        else:
            _, ids, masks = tracker.add_new_points_or_box(step[1], step[2], step[3],
                                                          clear_old_points=step[0] != "correct")
        scores = {o.object_id: o.object_score for o in tracker._impl.last.objects}
        out[n] = {oid: (m, scores[oid]) for oid, m in zip(ids, masks)}


def test_tracks_as_the_reference_and_resumes_on_another_replica(stack, second_replica, video_frames,
                                                                video_reference):
    ours: dict = {}
    cut = SCENARIO.index(("frame", 6))
    with Client(stack.target, api_key=KEYS["a"]) as client:
        assert "track" in client.model_info().capabilities
        tracker = VideoTracker(client, expected_frames=len(video_frames))
        run_remote(tracker, video_frames, range(cut), ours)
        session_id = tracker.session_id
        tracker.close()  # the stream's end writes the last checkpoint
    with Client(second_replica, api_key=KEYS["a"]) as client:
        tracker = VideoTracker(client, session_id=session_id, expected_frames=len(video_frames))
        assert tracker.frame_idx == 5 and sorted(tracker._impl.object_ids()) == [1, 2, 3]
        run_remote(tracker, video_frames, range(cut, len(SCENARIO)), ours)
        tracker.close()
    worst_iou, worst_score = 1.0, 0.0
    for n, expected in video_reference.items():
        iou, score = compare(expected, ours[n])
        worst_iou, worst_score = min(worst_iou, iou), max(worst_score, score)
    print(f"through the wire, resumed on another replica at frame 6: worst mask IoU {worst_iou:.5f}, "
          f"worst |Δ object score| {worst_score:.2e}")
    assert worst_iou >= 0.99 and worst_score <= 1e-3


def stream(target: str, key: str, *requests, timeout: float = 120):
    """Send these TrackRequests on one stream (sequence numbers from 1) and collect the answers."""
    msgs = [pb.TrackRequest(sequence=n + 1, **r) for n, r in enumerate(requests)]
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.SegmenterStub(channel).TrackObjects(iter(msgs), timeout=timeout,
                                                           metadata=(("authorization", f"Bearer {key}"),))
        return list(call)


def frame(image) -> pb.Image:
    from maskserve.client import image_message

    return image_message(image)


def code_of(response, error=None) -> str:
    error = response.error if error is None else error
    return next(c.name for c in grpc.StatusCode if c.value[0] == error.code)


def test_bad_input_gets_its_status_and_the_session_goes_on(stack, video_frames):
    small = np.ascontiguousarray(video_frames[1][:120, :160])
    point = pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)])
    out = stream(stack.target, KEYS["a"],
                 dict(frame=frame(video_frames[0])),  # before start
                 dict(start=pb.TrackStart(mask_format=pb.MASK_FORMAT_NONE)),
                 dict(add_object=point),  # before any frame
                 dict(frame=frame(video_frames[0])),
                 dict(add_object=point),
                 dict(add_object=point),  # a duplicate
                 dict(correct_object=pb.ObjectPrompt(object_id=9, points=[pb.Point(x=1, y=1, label=1)])),
                 dict(remove_object=9),
                 dict(correct_object=pb.ObjectPrompt(object_id=1, points=[pb.Point(x=900, y=1, label=1)])),
                 dict(correct_object=pb.ObjectPrompt(object_id=1, mask=pb.Mask(width=320, height=240,
                                                                                bitmap=b"\x00"))),
                 dict(frame=frame(small)),  # another size
                 dict(start=pb.TrackStart()),  # twice
                 dict(),  # empty
                 *[dict(add_object=pb.ObjectPrompt(object_id=k, box=pb.Box(x0=10, y0=10, x1=50, y1=50)))
                   for k in (2, 3, 4, 5)],  # the fifth object is over the limit of 4
                 dict(frame=frame(video_frames[1])))
    kinds = [r.WhichOneof("outcome") for r in out]
    codes = [code_of(r) if k == "error" else k for r, k in zip(out, kinds)]
    assert codes == ["INVALID_ARGUMENT", "session", "FAILED_PRECONDITION", "frame", "frame", "INVALID_ARGUMENT",
                     "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                     "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "frame", "frame", "frame",
                     "RESOURCE_EXHAUSTED", "frame"], codes
    assert "start" in out[0].error.message and "320x240" in out[10].error.message
    assert "is tracked already" in out[5].error.message and "not tracked" in out[6].error.message
    last = out[-1].frame
    assert last.frame_index == 1 and [o.object_id for o in last.objects] == [1, 2, 3, 4]


def test_sessions_are_their_tenants(stack, video_frames):
    out = stream(stack.target, KEYS["a"], dict(start=pb.TrackStart()), dict(frame=frame(video_frames[0])),
                 dict(add_object=pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)])))
    session_id = out[0].session.session_id
    for key, sid in ((KEYS["b"], session_id), (KEYS["a"], "0" * 32), (KEYS["a"], "x" * 5000)):
        (r,) = stream(stack.target, key, dict(start=pb.TrackStart(session_id=sid)))
        assert code_of(r) == "NOT_FOUND" and len(r.error.message) < 300
    (r,) = stream(stack.target, KEYS["a"], dict(start=pb.TrackStart(session_id=session_id)))
    assert r.session.resumed and list(r.session.object_ids) == [1] and r.session.frame_index == 0


def test_a_checkpoint_counts_in_the_tenants_quota(stack, video_frames):
    """Tenant "small" may hold 1 MiB, one embedding's worth: with its frame's embedding held, the session's
    checkpoint is refused (reported on the frame's answer) and tracking goes on."""
    point = pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)])
    out = stream(stack.target, KEYS["small"], dict(start=pb.TrackStart()), dict(frame=frame(video_frames[0])),
                 dict(add_object=point))
    assert [r.WhichOneof("outcome") for r in out] == ["session", "frame", "frame"]
    error = out[2].frame.checkpoint_error
    assert code_of(None, error) == "RESOURCE_EXHAUSTED" and "sessions" in error.message
    assert out[2].frame.objects[0].object_id == 1


def test_live_sessions_drop_to_the_newest_frame(stack, video_frames):
    requests = [dict(start=pb.TrackStart(drop_stale_frames=True, mask_format=pb.MASK_FORMAT_NONE)),
                dict(frame=frame(video_frames[0])),
                dict(add_object=pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)]))]
    requests += [dict(frame=frame(video_frames[k % 8])) for k in range(1, 7)]
    out = stream(stack.target, KEYS["a"], *requests)
    kinds = [r.WhichOneof("outcome") for r in out]
    dropped = kinds.count("dropped")
    tracked = [r.frame for r in out[3:] if r.WhichOneof("outcome") == "frame"]
    print(f"6 frames sent at once: {dropped} dropped, {len(tracked)} tracked")
    assert dropped >= 1 and tracked and kinds[-1] == "frame"  # the newest frame is always tracked
    assert sum(f.dropped_frames for f in tracked) == dropped
    assert [f.frame_index for f in tracked] == list(range(1, len(tracked) + 1))


def test_a_sam_model_refuses_tracking(tiny_model_dir):
    with LocalStack(model_dir=str(tiny_model_dir)) as s, Client(s.target) as client:
        assert list(client.model_info().capabilities) == []
        with pytest.raises(grpc.RpcError) as err:
            stream(s.target, "", dict(start=pb.TrackStart()))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SAM 2.1" in err.value.details()


def test_a_draining_replica_checkpoints_its_open_sessions(stack, video_frames):
    """SIGTERM (a rollout): the replica writes every open session's state before its streams end, so the
    client resumes elsewhere from the frame it had reached (this replica's interval would never have come)."""
    import queue
    import signal

    port = free_port()
    env = {**stack.env("decoder"), "MASKSERVE_GRPC_PORT": str(port), "MASKSERVE_METRICS_PORT": "0", "MASKSERVE_HTTP_PORT": "0",
           "MASKSERVE_TRACK_CHECKPOINT_S": "3600", "MASKSERVE_TRACK_IDLE_S": "300"}
    proc = start_role("decoder", env, stack.log_dir / "decoder-drain.log")
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, proc=proc)
        outbox: queue.Queue = queue.Queue()
        channel = grpc.insecure_channel(target)
        call = pb_grpc.SegmenterStub(channel).TrackObjects(iter(outbox.get, None), timeout=120,
                                                           metadata=(("authorization", f"Bearer {KEYS['a']}"),))
        point = pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)])
        for n, item in enumerate([dict(start=pb.TrackStart(mask_format=pb.MASK_FORMAT_NONE)),
                                  dict(frame=frame(video_frames[0])), dict(add_object=point),
                                  dict(frame=frame(video_frames[1]))]):
            outbox.put(pb.TrackRequest(sequence=n + 1, **item))
            reply = next(call)
            assert reply.WhichOneof("outcome") != "error", reply.error.message
            if n == 0:
                session_id = reply.session.session_id
        proc.send_signal(signal.SIGTERM)  # the stream is still open
        deadline = time.monotonic() + 15
        while True:
            (r,) = stream(stack.target, KEYS["a"], dict(start=pb.TrackStart(session_id=session_id)))
            if r.WhichOneof("outcome") == "session" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.WhichOneof("outcome") == "session", r.error.message
        assert r.session.frame_index == 1 and list(r.session.object_ids) == [1]
        outbox.put(None)
        channel.close()
        assert proc.wait(40) == 0
    finally:
        stop(proc)


class OpenStream:
    """A TrackObjects stream kept open: send a message, read its answer."""

    def __init__(self, target: str, key: str) -> None:
        import queue

        self.outbox: queue.Queue = queue.Queue()
        self.channel = grpc.insecure_channel(target)
        self.call = pb_grpc.SegmenterStub(self.channel).TrackObjects(
            iter(self.outbox.get, None), timeout=120, metadata=(("authorization", f"Bearer {key}"),))
        self.n = 0

    def send(self, **item):
        self.n += 1
        self.outbox.put(pb.TrackRequest(sequence=self.n, **item))
        return next(self.call)

    def close(self):
        self.outbox.put(None)
        self.channel.close()


def test_a_tenant_has_its_limit_of_sessions(stack):
    first, second, third = (OpenStream(stack.target, KEYS["b"]) for _ in range(3))
    try:
        assert first.send(start=pb.TrackStart()).WhichOneof("outcome") == "session"
        assert second.send(start=pb.TrackStart()).WhichOneof("outcome") == "session"
        refused = third.send(start=pb.TrackStart())
        assert code_of(refused) == "RESOURCE_EXHAUSTED" and "tracking sessions" in refused.error.message
        first.close()
        for _ in range(50):  # the closed stream's slot is given back as its handler ends
            again = third.send(start=pb.TrackStart())
            if again.WhichOneof("outcome") == "session":
                break
            time.sleep(0.1)
        assert again.WhichOneof("outcome") == "session"
    finally:
        for s in (first, second, third):
            s.close()


def test_a_silent_stream_ends_and_its_session_resumes(stack, video_frames):
    """A stream that sends nothing more is checkpointed and ended after MASKSERVE_TRACK_IDLE_S (here 20 s)."""
    s = OpenStream(stack.target, KEYS["a"])
    session_id = s.send(start=pb.TrackStart(mask_format=pb.MASK_FORMAT_NONE)).session.session_id
    s.send(frame=frame(video_frames[0]))
    s.send(add_object=pb.ObjectPrompt(object_id=1, points=[pb.Point(x=60, y=120, label=1)]))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        next(s.call)
    waited = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "resume" in err.value.details()
    assert 15 < waited < 60
    s.close()
    (r,) = stream(stack.target, KEYS["a"], dict(start=pb.TrackStart(session_id=session_id)))
    assert r.session.resumed and list(r.session.object_ids) == [1]


def test_tracking_over_a_websocket_answers_as_grpc(stack, video_frames):
    """The same session over HTTP's WebSocket (JSON messages, the API key as a browser sends it) and over gRPC:
    the same masks and scores on every frame."""
    import asyncio
    import base64

    import aiohttp
    from google.protobuf import json_format

    from maskserve.service import http

    h, w = video_frames[0].shape[:2]

    def raw(frame):
        return {"raw": {"width": w, "height": h, "format": "PIXEL_FORMAT_RGB8",
                        "data": base64.b64encode(frame.tobytes()).decode()}}

    messages = [{"start": {"maskFormat": "MASK_FORMAT_BITMAP"}}, {"frame": raw(video_frames[0])},
                {"addObject": {"objectId": 1, "points": [{"x": 60, "y": 120, "label": 1}]}},
                {"addObject": {"objectId": 2, "box": {"x0": 220, "y0": 60, "x1": 280, "y1": 120}}},
                {"frame": raw(video_frames[1])}, {"removeObject": 2}, {"frame": raw(video_frames[2])}]
    messages = [{"sequence": str(i), **m} for i, m in enumerate(messages)]

    async def over_websocket():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(stack.url.replace("http", "ws") + "/v1/streams/track",
                                    protocols=(http.SUBPROTOCOL, http.BEARER_PROTOCOL + KEYS["a"])) as ws:
                answers = []
                for m in messages:
                    await ws.send_str(json.dumps(m))
                    answers.append(json_format.ParseDict(json.loads((await ws.receive(timeout=120)).data),
                                                         pb.TrackResponse()))
                return answers

    over_http = asyncio.run(over_websocket())
    with grpc.insecure_channel(stack.target) as channel:
        requests = [json_format.ParseDict(m, pb.TrackRequest()) for m in messages]
        over_grpc = list(pb_grpc.SegmenterStub(channel).TrackObjects(
            iter(requests), metadata=[("authorization", f"Bearer {KEYS['a']}")]))
    assert over_http[0].session.session_id and over_http[0].session.session_id != over_grpc[0].session.session_id
    for a, b in zip(over_http[1:], over_grpc[1:], strict=True):
        assert a.WhichOneof("outcome") == b.WhichOneof("outcome") == "frame", (a, b)
        assert a.frame.frame_index == b.frame.frame_index and a.frame.image_id == b.frame.image_id
        assert a.frame.objects == b.frame.objects
    assert [o.object_id for o in over_http[-1].frame.objects] == [1]

