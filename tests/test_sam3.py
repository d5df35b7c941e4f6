"""SAM 3: its model directory, and parity with the `sam3` package's `Sam3Processor` (concept prompts: phrases and
exemplar boxes) and interactive predictor (SAM 1's prompts) on the same seeded random weights in Meta's
checkpoint format — in process and through the wire — plus SegmentConcept's refusals of bad input.

Random weights score all 200 queries within ~1e-5 of each other, so a threshold that sits between two of them
flips under float noise: each case takes its threshold in the middle of the widest gap among the reference's
top scores that keeps at least 10 instances (`_threshold`), and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest

import test_parity
from conftest import SAM3_SMALL, report
from maskserve import ConceptSegmenter, Predictor
from maskserve.build.specs import get_spec
from maskserve.client import Client
from maskserve.engines.model_dir import Manifest
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack

SCORE_TOL, BOX_TOL_PX, MASK_IOU_MIN = 1e-3, 0.5, 0.99
MIN_INSTANCES = 10
PHRASES = ("a cat", "the red car on the left", "person")


@pytest.fixture(scope="module")
def reference_model(sam3_random):
    from maskserve.build.sam3_export import load_model

    return load_model(sam3_random[0])


@pytest.fixture(scope="module")
def processor(reference_model):
    from sam3.model.sam3_image_processor import Sam3Processor

    return Sam3Processor(reference_model, device="cpu", confidence_threshold=0.0)


def _photo(photos, name):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(photos[name]))


def _threshold(scores: np.ndarray) -> float:
    """Mid-way in the widest gap between consecutive scores among the top 60, keeping ≥ MIN_INSTANCES. The gap
    must be 20x the scores' differences seen here (≤ 1e-7): a set that flips is then a real difference."""
    top = np.sort(np.asarray(scores, np.float64))[::-1][:60]
    gaps = top[MIN_INSTANCES - 1:-1] - top[MIN_INSTANCES:]
    k = MIN_INSTANCES - 1 + int(np.argmax(gaps))
    assert top[k] - top[k + 1] > 2e-6, "the scores leave no gap wide enough to compare thresholded sets"
    return float((top[k] + top[k + 1]) / 2)


# A phrase; then + a positive exemplar; then + a negative one (exemplars accumulate, as in the processor). Each
# photo is asked its own phrase.
PHRASE_OF = {"chelsea_300x451": PHRASES[0], "rocket_427x640": PHRASES[1], "coffee_400x600": PHRASES[2]}


def _steps(phrase: str) -> list:
    return [("text", phrase), ("box", ([0.5, 0.5, 0.3, 0.4], True)), ("box", ([0.25, 0.3, 0.2, 0.2], False))]


STEPS = _steps(PHRASES[0])


def _apply(segmenter, step, state):
    kind, arg = step
    return segmenter.set_text_prompt(arg, state) if kind == "text" else segmenter.add_geometric_prompt(*arg, state)


def _compare(ref: dict, ours: dict, what: str) -> tuple[float, float, float]:
    """(worst mask IoU, worst |Δ score|, worst |Δ box| px) of the same instances in the same order."""
    rs, os_ = ref["scores"].numpy(), np.asarray(ours["scores"])
    assert len(rs) == len(os_) >= MIN_INSTANCES, f"{what}: {len(os_)} instances, the reference {len(rs)}"
    rb, ob = ref["boxes"].numpy(), np.asarray(ours["boxes"])
    rm, om = ref["masks"].numpy()[:, 0], np.asarray(ours["masks"])[:, 0]
    ious = [test_parity._iou(a, b) for a, b in zip(rm, om)]
    return min(ious), float(np.abs(rs - os_).max()), float(np.abs(rb - ob).max())


def _check_concepts(processor, segmenter, photos, names, label: str) -> None:
    worst = [1.0, 0.0, 0.0]
    for name in names:
        image = _photo(photos, name)
        ref_state, state = processor.set_image(image), segmenter.set_image(np.asarray(image))
        for step in _steps(PHRASE_OF.get(name, PHRASES[0])):
            processor.set_confidence_threshold(0.0)
            threshold = _threshold(_apply(processor, step, ref_state)["scores"].numpy())
            ref = processor.set_confidence_threshold(threshold, ref_state)
            segmenter.set_confidence_threshold(threshold)
            iou, score, box = _compare(ref, _apply(segmenter, step, state), f"{name} {step}")
            worst = [min(worst[0], iou), max(worst[1], score), max(worst[2], box)]
    report(f"sam3 concepts {label}: worst mask IoU {worst[0]:.5f}, |Δ score| {worst[1]:.1e}, |Δ box| "
           f"{worst[2]:.1e} px (≥ {MIN_INSTANCES} instances a case, thresholds in score gaps)")
    assert worst[0] >= MASK_IOU_MIN and worst[1] <= SCORE_TOL and worst[2] <= BOX_TOL_PX


# -- the model directory --------------------------------------------------------------------------------------------
def test_model_directory_is_the_sam3_family(sam3_random):
    m = Manifest.load(sam3_random[1])
    assert (m.family, m.model_type, m.image_size, m.mask_input_size) == ("sam3", "sam3", 1008, 288)
    assert [a["name"] for a in m.embedding_layout] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1",
                                                       "fpn_0", "fpn_1", "fpn_2"]
    assert m.embedding_layout == [{"name": n, "shape": list(s), "dtype": d} for n, s, d in
                                  get_spec("sam3").embedding_layout]
    # what the store keeps of an image and tenant quotas count: 132.7 MB in float32, 66.4 MB in float16
    assert (m.embedding_nbytes(), m.embedding_nbytes("float16")) == (132_710_400, 66_355_200)
    assert m.concepts["architecture"] == SAM3_SMALL and m.concepts["box_slots"] == 16


def test_tenant_quotas_count_sam3_embeddings_at_their_size(sam3_random):
    """A tenant's `embedding_mb` buys 8x fewer SAM 3 images than SAM 2.1 ones (float16 in the store: 63.3 MiB)."""
    from maskserve.service import access, quotas

    m = Manifest.load(sam3_random[1])
    redis = type("Redis", (), {"register_script": lambda self, script: None})()
    shared = quotas.Shared(redis, m.model_version, m.embedding_nbytes("float16"))
    caller = access.Caller("acme", "key", frozenset({"*"}), access.Limits(embedding_mb=1024))
    assert shared.held_limit(caller) == 1024 * 2**20 // 66_355_200 == 16


def test_a_checkpoint_missing_parameters_is_refused(sam3_random, tmp_path):
    import torch

    from maskserve.build.checkpoint import CheckpointError
    from maskserve.build.sam3_export import load_model

    state = torch.load(sam3_random[0], weights_only=True)["model"]
    del state["detector.transformer.decoder.bbox_embed.layers.2.bias"]
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_model(tmp_path / "broken.pt")


# -- in process ---------------------------------------------------------------------------------------------------
def test_concepts_in_process_match_sam3_processor(sam3_random, processor, photos):
    _check_concepts(processor, ConceptSegmenter(sam3_random[1]), photos, ("chelsea_300x451", "rocket_427x640"),
                    "in process")


def test_text_features_are_cached_per_phrase_and_tenant(sam3_random):
    """A phrase's features are computed once per tenant: another tenant's call never finds them cached (a hit
    is faster than a miss, which would tell it what others asked)."""
    from maskserve.engines.concepts import ConceptModel

    model = ConceptModel(sam3_random[1], Manifest.load(sam3_random[1]))
    runs = []
    run = model.text.run
    model.text = type("Counting", (), {"run": lambda self, *a: runs.append(len(a[1]["tokens"])) or run(*a)})()
    tokens = [model.tokens(p) for p in ("a cat", "a dog", "a cat")]
    first = model.text_features(tokens)
    again = model.text_features([model.tokens("A  Cat"), model.tokens("a bird")])  # same tokens as "a cat"
    assert runs == [2, 1]  # one batch of the distinct phrases; then only the new one
    assert np.array_equal(first[0], first[2]) and np.array_equal(first[0], again[0])
    other = model.text_features([model.tokens("a cat")], scope="acme")
    model.text_features([model.tokens("a cat")], scope="acme")
    assert runs == [2, 1, 1] and np.array_equal(other[0], first[0])  # computed anew for acme, once


def test_sam1_prompts_match_the_interactive_predictor(sam3_random, reference_model, processor, photos):
    """SAM 1's task on a SAM 3 directory: the interactive head (SAM 2.1's decoder, with SAM 3's default hole
    filling of up to 256 low-res cells) against `Sam3Image.predict_inst`."""
    image = _photo(photos, "coffee_400x600")
    w, h = image.size
    state = processor.set_image(image)
    predictor = Predictor(sam3_random[1])
    predictor.set_image(np.asarray(image))
    worst_iou, worst_score, previous = 1.0, 0.0, None
    for case, kwargs in test_parity._prompt_cases(h, w):
        if case == "refine":
            kwargs = dict(kwargs, mask_input=previous[0][None])
            ours = predictor.predict(**dict(kwargs, mask_input=previous[1][None]))
        else:
            ours = predictor.predict(**kwargs)
        ref = reference_model.predict_inst(state, **kwargs)
        worst_iou = min(worst_iou, *(test_parity._iou(a, b) for a, b in zip(ref[0], ours[0])))
        worst_score = max(worst_score, float(np.abs(ref[1] - ours[1]).max()))
        best = int(np.argmax(ref[1]))
        previous = ref[2][best], ours[2][best]
    report(f"sam3 interactive head in process: worst mask IoU {worst_iou:.5f}, |Δ predicted IoU| {worst_score:.1e}")
    assert worst_iou >= test_parity.IOU_MIN and worst_score <= test_parity.SCORE_TOL


def test_segment_concept_command_writes_coco_json_and_an_overlay(sam3_random, tmp_path):
    from skimage import data
    from PIL import Image

    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "segment-concept", str(photo), "a cat", "a dog",
                          "--in-process", "--model-dir", str(sam3_random[1]), "--threshold", "0",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "out" / "chelsea.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["a cat", "a dog"]
    assert len(doc["annotations"]) == 400  # threshold 0: all 200 queries of each phrase
    a = doc["annotations"][0]
    assert set(a) >= {"id", "image_id", "category_id", "segmentation", "bbox", "area", "score"}
    assert a["segmentation"]["size"] == [300, 451]
    assert (tmp_path / "out" / "chelsea_overlay.png").is_file()
    assert "a cat: 200 instances" in out.stdout


# -- through the service ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(sam3_random, tmp_path_factory):
    with LocalStack(model_dir=str(sam3_random[1]), log_dir=tmp_path_factory.mktemp("sam3-stack")) as s:
        yield s


def test_concepts_through_the_wire_match_sam3_processor(stack, processor, photos):
    with Client(stack.target) as client:
        info = client.model_info()
        assert info.family == "sam3" and "concepts" in info.capabilities
        _check_concepts(processor, ConceptSegmenter(client=client), photos, ("coffee_400x600",), "through the wire")


def test_many_phrases_in_one_call(stack, sam3_random, photos):
    """Each phrase answered on its own, in order, as the in-process head answers it alone."""
    image = np.ascontiguousarray(photos["astronaut_512x512"][::2, ::3])
    box = (40.0, 30.0, 120.0, 200.0)
    with Client(stack.target) as client:
        answers = client.segment_concept(list(PHRASES), [box], image=image, confidence_threshold=0.0)
    assert [a.phrase for a in answers] == list(PHRASES)
    segmenter = ConceptSegmenter(sam3_random[1], confidence_threshold=0.0)
    h, w = image.shape[:2]
    cxcywh = [(box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h, (box[2] - box[0]) / w, (box[3] - box[1]) / h]
    for phrase, answer in zip(PHRASES, answers):
        state = segmenter.set_image(image)
        segmenter.set_text_prompt(phrase, state)
        local = segmenter.add_geometric_prompt(cxcywh, True, state)
        assert len(answer.scores) == len(local["scores"]) == 200
        assert np.abs(answer.scores - local["scores"]).max() <= SCORE_TOL
        assert np.abs(answer.boxes - local["boxes"]).max() <= BOX_TOL_PX
        assert min(test_parity._iou(a, b) for a, b in zip(answer.masks, local["masks"][:, 0])) >= MASK_IOU_MIN


def test_sam1_prompts_through_the_wire(stack, reference_model, processor, photos):
    image = _photo(photos, "chelsea_300x451")
    w, h = image.size
    state = processor.set_image(image)
    with Client(stack.target) as client:
        client.set_image(np.asarray(image))
        for case, kwargs in list(test_parity._prompt_cases(h, w))[:5]:
            ref = reference_model.predict_inst(state, **kwargs)
            ours = client.predict(**kwargs)
            assert min(test_parity._iou(a, b) for a, b in zip(ref[0], ours[0])) >= test_parity.IOU_MIN, case
            assert np.abs(ref[1] - ours[1]).max() <= test_parity.SCORE_TOL, case


def test_a_camera_stream_of_frames_and_clicks(stack, reference_model, processor, video_frames):
    """StreamSegment on SAM 3: each message a new frame, then a click on it; each best mask is the interactive
    predictor's for that frame (set_image + predict_inst)."""
    from PIL import Image

    from maskserve.client import decode_mask

    frames = video_frames[:2]
    h, w = frames[0].shape[:2]
    clicks = [(0.5 * w, 0.5 * h), (0.4 * w, 0.55 * h)]
    replies = test_parity.camera_stream(stack, frames, clicks)
    worst_iou, worst_score = 1.0, 0.0
    for i, (frame, point) in enumerate(zip(frames, clicks)):
        result = replies[2 * i + 1].result
        assert replies[2 * i].image_id and len(result.masks) == 1
        state = processor.set_image(Image.fromarray(frame))
        masks, scores, _ = reference_model.predict_inst(state, point_coords=np.array([point]),
                                                        point_labels=np.array([1]))
        best = int(np.argmax(scores))
        worst_iou = min(worst_iou, test_parity._iou(masks[best], decode_mask(result.masks[0])))
        worst_score = max(worst_score, abs(result.masks[0].predicted_iou - float(scores[best])))
    report(f"sam3 camera stream ({len(frames)} frames + clicks): worst best-mask IoU {worst_iou:.5f}, "
           f"|Δ predicted IoU| {worst_score:.1e}")
    assert worst_iou >= test_parity.IOU_MIN and worst_score <= test_parity.SCORE_TOL


def test_exemplar_boxes_at_the_edge_are_taken_and_outside_refused(stack, sam3_random, photos):
    """A box touching the image's edges is taken over the wire (the client clips float rounding to the image); a
    box past an edge, of no extent or not finite is refused before any call, in process as over a client."""
    from maskserve.engines.prompts import PromptError

    image = np.ascontiguousarray(photos["chelsea_300x451"])
    cx, bw = 0.85, 0.3  # right edge at 1.0
    with Client(stack.target) as client:
        segmenter = ConceptSegmenter(client=client, confidence_threshold=0.0)
        state = segmenter.set_image(image)
        answer = segmenter.add_geometric_prompt([cx, 0.5, bw, 1.0], True, state)
        assert len(answer["scores"]) == 200
        for box in ([0.9, 0.5, 0.4, 0.2], [0.5, 0.5, 0.0, 0.2], [float("nan"), 0.5, 0.1, 0.1]):
            with pytest.raises(PromptError, match=r"must lie inside the image") as refused:
                segmenter.add_geometric_prompt(box, True, state)
            assert refused.value.field == "exemplars[1]"
    assert ConceptSegmenter(client=object()).confidence_threshold is None  # the served model's default
    local = ConceptSegmenter(sam3_random[1])
    with pytest.raises(PromptError, match=r"must lie inside the image"):  # before the model sees it
        local.add_geometric_prompt([0.9, 0.5, 0.4, 0.2], True, {"embedding": {}, "original_height": 300,
                                                               "original_width": 451})


def test_prompts_do_not_wait_behind_concept_calls(stack, photos):
    """Concept calls take seconds a phrase, so they run on the heavy-work threads: with two of them in flight
    (as many as the prompt threads), a SegmentPrompt on the same image is answered before either."""
    import threading

    image = np.ascontiguousarray(photos["chelsea_300x451"])
    done = []
    with Client(stack.target, timeout=600) as client:
        image_id = client.encode(image)
        client.segment_concept(["a cat"], image=image_id)  # the phrase's text features cached
        def concept():
            try:
                client.segment_concept(["a cat"] * 2, image=image_id)
                done.append("concept")
            except Exception as exc:  # noqa: BLE001 - reported below
                done.append(repr(exc)[:300])

        calls = [threading.Thread(target=concept) for _ in range(2)]
        for call in calls:
            call.start()
        client.set_image(image)  # the same image: found in the store by its content
        client.predict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]))
        done.append("prompt")
        for call in calls:
            call.join()
    assert done == ["prompt", "concept", "concept"]


def _call(stack, request, method="SegmentConcept"):
    from google.rpc import error_details_pb2, status_pb2

    with grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        try:
            getattr(stub, method)(request, timeout=120)
        except grpc.RpcError as exc:
            status = status_pb2.Status.FromString(dict(exc.trailing_metadata())["grpc-status-details-bin"])
            fields = []
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields += [v.field for v in bad.field_violations]
            return exc.code(), exc.details(), fields
    raise AssertionError("the call succeeded")


def test_bad_concept_prompts_are_refused_naming_the_field(stack, photos):
    image = np.ascontiguousarray(photos["chelsea_300x451"])
    with Client(stack.target) as client:
        image_id = client.encode(image)
    box = pb.Box(x0=10, y0=10, x1=100, y1=100)
    cases = {
        "empty phrase": (dict(phrases=["a cat", "  "]), "phrases[1]"),
        "over-long phrase": (dict(phrases=["big " * 40]), "phrases[0]"),
        "too many phrases": (dict(phrases=["cat"] * 17), "phrases"),
        "too many exemplars": (dict(phrases=["cat"], exemplars=[pb.Exemplar(box=box)] * 17), "exemplars"),
        "box outside": (dict(exemplars=[pb.Exemplar(box=pb.Box(x0=10, y0=10, x1=460, y1=100))]), "exemplars[0].box"),
        "empty box": (dict(exemplars=[pb.Exemplar(box=pb.Box(x0=50, y0=10, x1=50, y1=100))]), "exemplars[0].box"),
        "nothing": (dict(), "phrases"),
        "threshold": (dict(phrases=["cat"], confidence_threshold=1.5), "confidence_threshold"),
    }
    for what, (fields, field) in cases.items():
        code, details, violations = _call(stack, pb.SegmentConceptRequest(image_id=image_id, **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violations == [field], (what, code, details, violations)
    # a phrase that is not UTF-8: the request's bytes are not a valid message, refused before any work
    raw = pb.SegmentConceptRequest(image_id=image_id, phrases=["cat"]).SerializeToString().replace(b"cat", b"c\xffa")
    with grpc.insecure_channel(stack.target) as channel:
        call = channel.unary_unary("/maskserve.v1.Segmenter/SegmentConcept")
        with pytest.raises(grpc.RpcError) as caught:
            call(raw, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "phrases[0]" in caught.value.details()


def test_get_embedding_sends_what_the_prompt_decoder_reads(stack, photos):
    """The browser-side decoder needs the interactive head's 21 MB, not the detector's pyramid (66 MB float16
    in all, over the 64 MB message limit)."""
    with Client(stack.target) as client:
        image_id = client.encode(np.ascontiguousarray(photos["small_23x41"]))
        embedding = client.stub.GetEmbedding(pb.GetEmbeddingRequest(image_id=image_id), timeout=60)
    assert [(a.name, list(a.shape)) for a in embedding.arrays] == [
        ("image_embeddings", [1, 256, 72, 72]), ("high_res_feats_0", [1, 32, 288, 288]),
        ("high_res_feats_1", [1, 64, 144, 144])]


def test_segment_everything_is_refused_on_sam3(stack, photos):
    image = np.ascontiguousarray(photos["small_23x41"])
    request = pb.SegmentEverythingRequest(image=pb.Image(raw=pb.RawImage(
        width=image.shape[1], height=image.shape[0], format=pb.PIXEL_FORMAT_RGB8, data=image.tobytes())))
    with grpc.insecure_channel(stack.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list(pb_grpc.SegmenterStub(channel).SegmentEverything(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no automatic mask generator" in caught.value.details()


# -- full size ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_sam3_matches_the_reference(tmp_path, photos):
    """Meta's architecture (848 M parameters with the interactive head; seeded random weights in its format):
    built with `maskserve build`, a phrase then an exemplar, and a click, against the package."""
    import gc

    from sam3.model.sam3_image_processor import Sam3Processor

    from maskserve.build.sam3_export import load_model, seeded_random_checkpoint

    checkpoint = seeded_random_checkpoint(tmp_path / "sam3.pt")
    gc.collect()
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--model-type", "sam3",
                          "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    manifest = Manifest.load(tmp_path / "model")
    assert manifest.concepts["architecture"]["vit_depth"] == 32 and not (tmp_path / "model" / "encoder.onnx.data").exists()
    model = load_model(checkpoint)
    processor = Sam3Processor(model, device="cpu", confidence_threshold=0.0)
    image = _photo(photos, "chelsea_300x451")
    ref_state = processor.set_image(image)
    segmenter = ConceptSegmenter(tmp_path / "model")
    state = segmenter.set_image(np.asarray(image))
    worst = [1.0, 0.0, 0.0]
    for step in STEPS[:2]:
        processor.set_confidence_threshold(0.0)
        threshold = _threshold(_apply(processor, step, ref_state)["scores"].numpy())
        ref = processor.set_confidence_threshold(threshold, ref_state)
        segmenter.set_confidence_threshold(threshold)
        iou, score, box = _compare(ref, _apply(segmenter, step, state), f"full size {step}")
        worst = [min(worst[0], iou), max(worst[1], score), max(worst[2], box)]
    w, h = image.size
    click = dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]))
    ref_masks, ref_scores, _ = model.predict_inst(ref_state, **click)
    masks, scores, _ = segmenter.predictor.predict(**click)
    click_iou = min(test_parity._iou(a, b) for a, b in zip(ref_masks, masks))
    report(f"sam3 full size: concepts worst mask IoU {worst[0]:.5f}, |Δ score| {worst[1]:.1e}, |Δ box| "
           f"{worst[2]:.1e} px; a click: mask IoU {click_iou:.5f}, |Δ predicted IoU| "
           f"{float(np.abs(ref_scores - scores).max()):.1e}")
    assert worst[0] >= MASK_IOU_MIN and worst[1] <= SCORE_TOL and worst[2] <= BOX_TOL_PX
    assert click_iou >= test_parity.IOU_MIN and np.abs(ref_scores - scores).max() <= test_parity.SCORE_TOL
