"""Video tracking (engines/tracking.py) against the official SAM2VideoPredictor on the same seeded random SAM 2.1
weights: a clip of moving, occluding, leaving objects; prompts, an object added mid-stream, a correction."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve.engines.model_dir import Manifest
from maskserve.engines.tracking import Tracker, TrackingSession, from_bfloat16, to_bfloat16

from video import SCENARIO, compare


@pytest.fixture(scope="module")
def frames(video_frames):
    return video_frames


def encode(model_dir, frames) -> list[dict]:
    """Each frame's embedding arrays, as the encoder pool would store them."""
    from maskserve.engines.predictor import Predictor

    predictor = Predictor(model_dir)
    out = []
    for frame in frames:
        predictor.set_image(frame)
        out.append({k: v.copy() for k, v in predictor.get_image_arrays().items()})
    return out


@pytest.fixture(scope="module")
def frame_arrays(sam2_tiny_random, frames):
    return encode(sam2_tiny_random[1], frames)


@pytest.fixture(scope="module")
def reference(video_reference):
    return video_reference


@pytest.fixture(scope="module")
def tracker(sam2_tiny_random):
    model_dir = sam2_tiny_random[1]
    return Tracker(model_dir, Manifest.load(model_dir))


def as_answers(session: TrackingSession, results) -> dict:
    masks = session.masks(results)
    return {r.object_id: (m, r.score) for r, m in zip(results, masks)}


def run_steps(session: TrackingSession, frame_arrays, scenario, steps, out: dict) -> None:
    for n in steps:
        step = scenario[n]
        if step[0] == "frame":
            results = session.track(frame_arrays[step[1]])
        elif step[0] == "box":
            results = session.add_points(step[1], box=step[2])
        else:
            results = session.add_points(step[1], step[2], step[3], clear_old_points=step[0] != "correct")
        out[n] = as_answers(session, results)


def check(reference, ours, label):
    worst_iou, worst_score = 1.0, 0.0
    for n in reference:
        iou, score = compare(reference[n], ours[n])
        worst_iou, worst_score = min(worst_iou, iou), max(worst_score, score)
    print(f"{label}: worst mask IoU {worst_iou:.5f}, worst |Δ object score| {worst_score:.2e} over "
          f"{sum(len(r) for r in reference.values())} object-frames")
    assert worst_iou >= 0.99 and worst_score <= 1e-3


def test_tracks_as_the_reference(tracker, frames, frame_arrays, reference):
    h, w = frames[0].shape[:2]
    session = tracker.session((h, w), num_frames=len(frames))
    ours: dict = {}
    run_steps(session, frame_arrays, SCENARIO, range(len(SCENARIO)), ours)
    check(reference, ours, "in process")
    scores = [s for answers in reference.values() for _, s in answers.values()]
    assert min(scores) < 0 < max(scores), "the scenario should have visible and absent objects"


def test_resumes_from_its_state_bytes(tracker, frames, frame_arrays, reference):
    """A session checkpointed mid-stream (after the correction) and restored elsewhere goes on as the reference."""
    h, w = frames[0].shape[:2]
    session = tracker.session((h, w), num_frames=len(frames))
    ours: dict = {}
    cut = SCENARIO.index(("frame", 6))
    run_steps(session, frame_arrays, SCENARIO, range(cut), ours)
    data = session.state_bytes()
    restored = TrackingSession.restore(tracker, data)
    restored.resume(frame_arrays[restored.frame])
    assert restored.state_bytes() == data
    run_steps(restored, frame_arrays, SCENARIO, range(cut, len(SCENARIO)), ours)
    check(reference, ours, "resumed")


def test_the_soak_short_form(sam2_tiny_random):
    """`maskserve soak-track`'s CI form: two objects through 24 frames; past the memory window the state is
    constant and the process's memory level (the long form, 2000 frames, is run by hand)."""
    from maskserve import soak

    result = soak.track(str(sam2_tiny_random[1]), frames=24, objects=2, window=4, distinct_frames=4)
    print(result["windows"])
    assert result["flat"]["state_bytes_constant"]
    assert result["flat"]["rss_growth_second_half_mb"] < 64


def test_state_stays_flat(tracker, frame_arrays):
    """Past the pointer window (16 frames) nothing grows: the outputs held and the checkpoint's size."""
    session = tracker.session((240, 320))
    session.track(frame_arrays[0])
    session.add_points(1, [[60, 120]], [1])
    sizes = []
    for f in range(1, 20):
        session.track(frame_arrays[f % len(frame_arrays)])
        sizes.append((len(session.objects[1].outputs), len(session.state_bytes())))
    window = tracker.max_obj_ptrs + 1  # the conditioning frame and the last 15 frames' pointers, plus this one
    assert max(n for n, _ in sizes) <= window
    assert sizes[-1] == sizes[-2] == sizes[-3]
    memories = sum(o.maskmem is not None for o in session.objects[1].outputs.values())
    # the conditioning frame, this frame and the num_maskmem - 1 before it (what a correction here reads)
    assert memories == tracker.num_maskmem + 1


def test_bad_prompts_are_clear_errors(tracker, frame_arrays):
    session = tracker.session((240, 320))
    with pytest.raises(ValueError, match="no frame yet"):
        session.add_points(1, [[1, 1]], [1])
    session.track(frame_arrays[0])
    with pytest.raises(ValueError, match="points or a box"):
        session.add_points(1)
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        session.add_points(1, [[1, 1], [2, 2]], [1])
    with pytest.raises(ValueError, match="one 2-D mask"):
        session.add_mask(1, np.zeros((2, 3, 4)))
    with pytest.raises(KeyError):
        session.remove_object(7)
    assert session.objects == {}


def test_mask_prompts_and_removal(tracker, frame_arrays):
    """A mask prompt is the object's answer as given; removing an object leaves the others as they were."""
    session = tracker.session((240, 320))
    session.track(frame_arrays[0])
    mask = np.zeros((240, 320), bool)
    mask[60:120, 40:100] = True
    results = session.add_mask(5, mask)
    got = session.masks(results)[0]
    assert np.count_nonzero(got & mask) / np.count_nonzero(got | mask) > 0.9
    assert results[0].visible and results[0].score == 10.0
    session.add_points(6, [[200, 100]], [1])
    before = session.track(frame_arrays[1])
    session.remove_object(6)
    assert [r.object_id for r in session.results()] == [5]
    np.testing.assert_array_equal(session.results()[0].low_res, before[0].low_res)


def test_bfloat16_rounds_as_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 100
    x[:4] = [0.0, -0.0, 1e-40, 3.3895314e38]
    ours = from_bfloat16(to_bfloat16(x))
    theirs = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_a_sam_model_cannot_track(tiny_model_dir):
    with pytest.raises(ValueError, match="cannot track video"):
        Tracker(tiny_model_dir, Manifest.load(tiny_model_dir))


@pytest.mark.slow
def test_a_larger_model_tracks_as_the_reference(tmp_path_factory, video_frames):
    """sam2.1_hiera_small (46 M parameters) over the scenario's first four frames: two objects prompted on the
    first, a third added on the fourth."""
    from conftest import sam2_random
    from maskserve.build.specs import get_spec
    from video import run_reference

    checkpoint, model_dir = sam2_random(tmp_path_factory, "sam2.1_hiera_small")
    frames = video_frames[:4]
    scenario = SCENARIO[:SCENARIO.index(("frame", 4))]
    m = Manifest.load(model_dir)
    reference = run_reference(checkpoint, get_spec("sam2.1_hiera_small").config, frames, scenario,
                              tmp_path_factory.mktemp("clip-small"), m.pixel_mean, m.pixel_std)
    arrays = encode(model_dir, frames)
    session = Tracker(model_dir, m).session(frames[0].shape[:2], num_frames=len(frames))
    ours: dict = {}
    run_steps(session, arrays, scenario, range(len(scenario)), ours)
    check(reference, ours, "sam2.1_hiera_small")


@pytest.mark.slow
def test_a_live_stream_past_the_memory_window_tracks_as_the_reference(sam2_tiny_random, tracker, tmp_path_factory):
    """18 frames, the session not told the length (a live stream: pointers normalised by 15, as the reference
    does for any video of 16 frames or more), so the state is pruned as it goes; a correction on frame 12."""
    from maskserve.build.specs import get_spec
    from video import clip, run_reference

    frames = clip(18)
    scenario = [("frame", 0), ("points", 1, [[60, 120]], [1]), *[("frame", f) for f in range(1, 13)],
                ("correct", 1, [[120, 120]], [0]), *[("frame", f) for f in range(13, 18)]]
    checkpoint, model_dir = sam2_tiny_random
    m = Manifest.load(model_dir)
    reference = run_reference(checkpoint, get_spec("sam2.1_hiera_tiny").config, frames, scenario,
                              tmp_path_factory.mktemp("clip-long"), m.pixel_mean, m.pixel_std)
    arrays = encode(model_dir, frames)
    session = tracker.session(frames[0].shape[:2])  # no length: a stream
    ours: dict = {}
    run_steps(session, arrays, scenario, range(len(scenario)), ours)
    assert len(session.objects[1].outputs) < 18  # pruned as it went
    check(reference, ours, "live stream, 18 frames")
