"""Prompts against one image's embedding → the masks a response carries: the decoder engine run (on a
worker thread), then each mask upscaled, thresholded, measured and encoded in the format asked for."""

from __future__ import annotations

import contextlib
import threading
import time

import cv2
import numpy as np

from maskserve import engines
from maskserve.engines import automatic, concepts, masks, prompts as prompt_lib

from . import metrics, store
from .config import Settings
from .proto import pb
from .tracing import tracer


def to_prompt(p: pb.Prompt) -> prompt_lib.Prompt:
    """A request's prompt as the engines take it (a `mask_from` handle is resolved by the caller)."""
    coords = labels = box = mask = None
    if p.points:
        coords = np.array([[q.x, q.y] for q in p.points], np.float64)
        labels = np.array([q.label for q in p.points], np.int64)
    if p.HasField("box"):
        box = np.array([p.box.x0, p.box.y0, p.box.x1, p.box.y1], np.float64)
    if p.HasField("mask_input"):
        side = p.mask_input.side
        if len(p.mask_input.data) != 4 * side * side:
            raise prompt_lib.PromptError(f"mask_input holds {len(p.mask_input.data)} bytes; a {side}x{side} "
                                         f"float32 grid is {4 * side * side}", "mask_input")
        mask = np.frombuffer(p.mask_input.data, "<f4").reshape(1, side, side)
    return prompt_lib.Prompt(coords, labels, box, mask)


class Decoding:
    def __init__(self, settings: Settings, model_dir, model: engines.Model) -> None:
        self.settings, self.model, self.manifest = settings, model, model.manifest
        self.model_dir = model_dir  # its graphs (the HTTP port serves the decoder's to the web annotator)
        # ONNX Runtime: a decode that starts while another runs gets one thread instead of all of them. Runs
        # side by side on one core each do more work than runs contending for every core (on 2 cores with 4
        # clients: about 1.5x the throughput), and a lone request still gets every core.
        self.narrow = None
        if self.manifest.backend == "onnxruntime" and settings.decode_threads > 1 and settings.ort_threads != 1:
            self.narrow = engines.load(model_dir, encoder=False, threads=1).decoder
        self.running = 0
        self.lock = threading.Lock()
        self.concepts = None  # the concept head (SAM 3): phrases and exemplar boxes → instances
        if self.manifest.concepts:
            from maskserve.engines.concepts import ConceptModel

            self.concepts = ConceptModel(model_dir, self.manifest, settings.ort_threads or None)

    @contextlib.contextmanager
    def decoder(self):
        """The decoder for a run: all threads when it runs alone, one when another run is under way."""
        with self.lock:
            decoder = self.narrow if self.running and self.narrow else self.model.decoder
            self.running += 1
        try:
            yield decoder
        finally:
            with self.lock:
                self.running -= 1

    def answer(self, emb: store.StoredEmbedding, prompts: list, options: pb.OutputOptions,
               full_logits: bool) -> tuple[list, list]:
        """(PromptResults, the engine's answers) for prompts on one image."""
        with self.decoder() as decoder, tracer.start_as_current_span("decode", attributes={"prompts": len(prompts)}):
            start = time.perf_counter()
            answers = self._decode(decoder, emb, prompts, not options.single_mask, full_logits)
            metrics.STAGE.labels("decode").observe(time.perf_counter() - start)
        with tracer.start_as_current_span("postprocess"):
            start = time.perf_counter()
            results = [self.result(a, emb.original_size, options) for a in answers]
            metrics.STAGE.labels("postprocess").observe(time.perf_counter() - start)
        return results, answers

    def logits(self, emb: store.StoredEmbedding, prompt: prompt_lib.Prompt, multimask: bool) -> np.ndarray:
        """An earlier answer's low-res logits made again, whole, for a prompt that refines it by handle."""
        with self.decoder() as decoder:
            return self._decode(decoder, emb, [prompt], multimask, True)[0].low_res_logits

    def everything_crop(self, emb: store.StoredEmbedding, box, grid, size, options, cancel, advance, timings):
        """One crop's point grid for SegmentEverything (automatic.process_crop on this decoder)."""
        with self.decoder() as decoder:
            return automatic.process_crop(decoder, self.manifest, emb.arrays, self.prepared(emb), box, grid, size,
                                          options, cancel=cancel, progress=advance, timings=timings)

    def prepared(self, emb: store.StoredEmbedding) -> dict | None:
        """The image's share of the decoder's work, made on its first prompt in this process and kept with it
        in the LRU. Always by one decoder, the narrow one where there is one: ONNX Runtime's outputs are views
        into the arena of the session that made them, held there while the LRU keeps the image, and an arena
        never returns memory. Made by whichever decoder a call got, the LRU's tensors were split between two
        arenas at random and each grew, for many minutes, to the largest share it had ever held (a full LRU of
        the tiny model: decoder RSS +4 MB/min); in one arena they take the LRU's size and stay there. The
        narrow one, because its one thread does not contend with a decode under way (all threads measured
        1.5x slower prompts at two at once); alone it costs the first prompt on an image ViT-B 7.5 ms, not 4.2."""
        if emb.prepared is None:
            emb.prepared = (self.narrow or self.model.decoder).prepare(emb.arrays)
        return emb.prepared

    def _decode(self, decoder, emb: store.StoredEmbedding, prompts: list, multimask: bool, full_logits: bool) -> list:
        return prompt_lib.decode(decoder, self.manifest, emb.arrays, emb.original_size, prompts,
                                 multimask_output=multimask, max_points=self.settings.max_points,
                                 prepared=self.prepared(emb), full_logits=full_logits)

    def concept_results(self, emb: store.StoredEmbedding, phrases: list[str | None], exemplars: list,
                        threshold: float | None, fmt, tenant: str) -> list:
        """SegmentConcept's ConceptResults: each phrase's instances on one stored image (phrases' text features
        cached per tenant)."""
        with tracer.start_as_current_span("concepts", attributes={"phrases": len(phrases)}):
            start = time.perf_counter()
            answers = self.concepts.segment(emb.arrays, emb.original_size, phrases, exemplars, threshold, tenant)
            metrics.STAGE.labels("decode").observe(time.perf_counter() - start)
        results = []
        for phrase, found in zip(phrases, answers):
            result = pb.ConceptResult(phrase=phrase or "", presence=found.presence)
            for i, (score, box) in enumerate(zip(found.scores, found.boxes)):
                instance = result.instances.add(score=float(score))
                instance.box.x0, instance.box.y0, instance.box.x1, instance.box.y1 = (float(v) for v in box)
                logits = found.full_logits(emb.original_size, i)
                fill_mask(instance.mask, logits, fmt, False, concepts.is_mask(logits))
            results.append(result)
        return results

    def result(self, answer: prompt_lib.Answer, original_size, options: pb.OutputOptions) -> pb.PromptResult:
        keep = range(len(answer.iou_predictions))
        if options.best_mask_only:
            keep = [int(np.argmax(answer.iou_predictions))]
        h, w = original_size
        result = pb.PromptResult()
        fmt = options.mask_format
        # COCO RLE is column-major: it is made in the transposed frame (W, H), where its runs are contiguous;
        # packed bits and PNG are row-major, made in the image's frame. One mask at a time: its full-size maps
        # are still in cache from the upscale to the encoding.
        transposed = fmt in (pb.MASK_FORMAT_UNSPECIFIED, pb.MASK_FORMAT_COCO_RLE)
        for k in keep:
            low = answer.mask_logits[k]  # SAM 2.1 upscales its unclamped logits, returns the clamped ones
            if transposed:
                full = prompt_lib.full_resolution_map(cv2.transpose(low), self.manifest, (w, h))
            else:
                full = prompt_lib.full_resolution_map(low, self.manifest, (h, w))
            m = result.masks.add(predicted_iou=float(answer.iou_predictions[k]), output_index=k)
            fill_mask(m, full, fmt, transposed)
            if options.return_low_res_logits:
                side = answer.low_res_logits.shape[-1]
                m.low_res_logits.side = side
                m.low_res_logits.data = answer.low_res_logits[k].astype("<f4").tobytes()
        return result


def fill_mask(m: pb.Mask, full: np.ndarray, fmt, transposed: bool, binary: np.ndarray | None = None) -> None:
    """A Mask message's pixels (in the format asked for), size, box, area and stability from its full-size logits
    (> 0 is the mask, unless `binary` is given), in the image's frame or, for COCO RLE, transposed (W, H), where
    its runs lie."""
    binary = full > 0.0 if binary is None else binary
    x, y, bw, bh = masks.bbox_xywh(binary)
    (w, h), (x, y, bw, bh) = (binary.shape, (y, x, bh, bw)) if transposed else (binary.shape[::-1], (x, y, bw, bh))
    m.width, m.height, m.area = w, h, int(np.count_nonzero(binary))
    m.stability_score = masks.stability_score(full)
    m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height = x, y, bw, bh
    if fmt in (pb.MASK_FORMAT_UNSPECIFIED, pb.MASK_FORMAT_COCO_RLE):
        m.rle.counts = masks.encode_rle_transposed(binary if transposed else binary.T)
    elif fmt == pb.MASK_FORMAT_PNG:
        m.png = masks.encode_png(binary)
    elif fmt == pb.MASK_FORMAT_BITMAP:
        m.bitmap = masks.encode_bitmap(binary)
