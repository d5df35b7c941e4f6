"""Concept prompts (SAM 3): a noun phrase and/or exemplar boxes → every instance of it, with a mask, a box and a
score — `Sam3Processor`'s `set_text_prompt` / `add_geometric_prompt` on a stored embedding, without torch.

A phrase becomes tokens (`clip_tokenizer`) and text features (`text.onnx`), cached by its tokens: they depend on
the phrase alone. A prompt runs `detector.onnx` on the image's feature pyramid (the embedding's `fpn_*` arrays):
200 queries, each scored sigmoid(logit) · sigmoid(presence), masks made only for those above the threshold.
Then as the processor: boxes cx, cy, w, h → x0, y0, x1, y1 × (W, H, W, H) of the original image, unclipped; the
288² mask logits resized bilinearly straight to (H, W) (the image was stretched to the square), their sigmoid
> 0.5 the mask. Instances stay in query order, as the reference leaves them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import families
from .clip_tokenizer import ClipTokenizer
from .model_dir import Manifest
from .prompts import PromptError

BOX_ONLY_PHRASE = "visual"  # what Sam3Processor encodes as the text of a prompt that has only boxes
MAX_PHRASE_CHARS = 1000  # before tokenizing: anything longer cannot fit the context anyway


@dataclass
class Exemplar:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in original image pixels
    positive: bool = True


@dataclass
class Instances:
    """One concept prompt's answer: n instances in query order."""

    scores: np.ndarray  # (n,) float32
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 in original pixels
    mask_logits: np.ndarray  # (n, 288, 288) float32 low-res logits; `masks` upscales them
    presence: float  # the presence head's probability that the concept is in the image at all

    def full_logits(self, original_size: tuple[int, int], index: int) -> np.ndarray:
        """Instance `index`'s (H, W) mask logits."""
        from .sam2_transforms import upscale_map

        return upscale_map(self.mask_logits[index], original_size)

    def masks(self, original_size: tuple[int, int]) -> np.ndarray:
        """(n, H, W) bool."""
        out = np.empty((len(self.scores), *original_size), bool)
        for i in range(len(self.scores)):
            out[i] = is_mask(self.full_logits(original_size, i))
        return out


def probabilities(logits: np.ndarray) -> np.ndarray:
    """The processor's `masks_logits` (which hold probabilities): float32 sigmoid."""
    return (np.float32(1) / (np.float32(1) + np.exp(-logits, dtype=np.float32))).astype(np.float32)


def is_mask(logits: np.ndarray) -> np.ndarray:
    """The processor's mask: probability > 0.5 (not logit > 0: a logit within ~1e-7 of 0 rounds to 0.5)."""
    return probabilities(logits) > np.float32(0.5)


def check_exemplars(exemplars: list[Exemplar], original_size: tuple[int, int]) -> None:
    """PromptError naming the first exemplar box that is not finite, has no extent or leaves the image (their
    count is `ConceptModel.detect`'s to check, and the service's before it encodes an image)."""
    h, w = original_size
    for i, e in enumerate(exemplars):
        x0, y0, x1, y1 = (float(v) for v in np.asarray(e.box, np.float64).reshape(4))
        if not np.isfinite([x0, y0, x1, y1]).all():
            raise PromptError("the box has a coordinate that is not a finite number", f"exemplars[{i}].box")
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must lie inside the {w}x{h} image with "
                              "x0 < x1 and y0 < y1", f"exemplars[{i}].box")


def normalized_boxes(exemplars: list[Exemplar], original_size: tuple[int, int]) -> np.ndarray:
    """Pixel x0, y0, x1, y1 → cx, cy, w, h in [0, 1] of the image (the detector's, and Sam3Processor's input)."""
    h, w = original_size
    b = np.array([e.box for e in exemplars], np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                     (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1).astype(np.float32)


class ConceptModel:
    """A model directory's concept head on ONNX Runtime: the text encoder with its cache, and the detector."""

    def __init__(self, directory: str | Path, manifest: Manifest, threads: int | None = None,
                 cache_size: int = 1024) -> None:  # 32 KB a phrase
        from .onnxruntime_backend import _session

        c = manifest.concepts
        if not c:
            raise ValueError(f"{directory} has no concept head (its family is {manifest.family}; SAM 3 has one)")
        directory = Path(directory)
        self.tokenizer = ClipTokenizer(directory / c["vocabulary_file"])
        self.text = _session(directory / c["text_file"], threads)
        self.detector = _session(directory / c["detector_file"], threads)
        self.context, self.slots = int(c["context_length"]), int(c["box_slots"])
        self.threshold = float(c["confidence_threshold"])
        self.arrays = families.of(manifest).concept_arrays  # the embedding's arrays the detector reads, by name
        self.cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.cache_size, self.lock = cache_size, threading.Lock()

    def tokens(self, phrase: str, field: str = "phrase") -> np.ndarray:
        """(context,) int64, or PromptError where the phrase is empty or would be cut (the reference cuts it
        silently: its last words would be lost)."""
        if len(phrase) > MAX_PHRASE_CHARS:
            raise PromptError(f"a phrase of {len(phrase)} characters; at most {MAX_PHRASE_CHARS}", field)
        ids = self.tokenizer.encode(phrase)
        if not ids:
            raise PromptError("an empty phrase: give a noun phrase, or exemplar boxes alone", field)
        if len(ids) > self.context - 2:
            raise PromptError(f"the phrase is {len(ids)} tokens long; at most {self.context - 2} fit the model's "
                              "text context: shorten it", field)
        return self.tokenizer([phrase], self.context)[0]

    def text_features(self, tokens: list[np.ndarray], scope: str = "") -> list[np.ndarray]:
        """Each phrase's (context, 256) features; the ones not cached run as one batch. Entries are cached per
        `scope` (the service's tenant): a hit is faster than a miss, which would tell one tenant which phrases
        another asked for."""
        keys = [scope.encode() + b"\0" + t.tobytes() for t in tokens]
        with self.lock:
            found = {k: self.cache[k] for k in keys if k in self.cache}
            for k in found:
                self.cache.move_to_end(k)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            batch = np.stack([np.frombuffer(k[len(scope.encode()) + 1:], np.int64) for k in missing])
            for k, features in zip(missing, self.text.run(None, {"tokens": batch})[0]):
                found[k] = features.copy()  # not a view that would keep the whole batch
            with self.lock:
                for k in missing:
                    self.cache[k] = found[k]
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return [found[k] for k in keys]

    def detect(self, arrays, tokens: np.ndarray, features: np.ndarray, boxes: np.ndarray, positive: np.ndarray,
               threshold: float, original_size: tuple[int, int]) -> Instances:
        """One prompt: the phrase's tokens and features, exemplar boxes (k, 4) normalised cx, cy, w, h with their
        labels (k,) bool, on the image whose embedding `arrays` holds (the fpn_* arrays are read)."""
        k = len(boxes)
        if k > self.slots:
            raise PromptError(f"{k} exemplars; the model takes at most {self.slots}", "exemplars")
        slots = np.full((1, self.slots, 4), 0.5, np.float32)
        slots[0, :k] = boxes
        labels = np.zeros((1, self.slots), np.int64)
        labels[0, :k] = positive
        feeds = {name: np.ascontiguousarray(arrays[name], np.float32) for name in self.arrays}
        feeds.update(text_features=features[None].astype(np.float32), text_mask=(tokens == 0)[None], boxes=slots,
                     box_labels=labels, box_mask=(np.arange(self.slots) >= k)[None],
                     threshold=np.array(threshold, np.float32))
        scores, cxcywh, presence, keep, mask_logits = self.detector.run(None, feeds)
        c = cxcywh[keep]
        xyxy = np.stack([c[:, 0] - 0.5 * c[:, 2], c[:, 1] - 0.5 * c[:, 3], c[:, 0] + 0.5 * c[:, 2],
                         c[:, 1] + 0.5 * c[:, 3]], axis=1)
        h, w = original_size
        return Instances(scores[keep], (xyxy * np.array([w, h, w, h], np.float32)).astype(np.float32),
                         mask_logits, float(presence))

    def segment(self, arrays, original_size: tuple[int, int], phrases: list[str | None],
                exemplars: list[Exemplar] = (), threshold: float | None = None, scope: str = "") -> list[Instances]:
        """Each phrase (None: exemplar boxes alone) with the same exemplars → its instances; the phrases' text
        features run as one batch (cached per `scope`), their detector runs one after another."""
        if not phrases:
            raise PromptError("no phrases and no exemplar boxes: give at least one", "phrases")
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise PromptError(f"confidence_threshold {threshold} is not within [0, 1]", "confidence_threshold")
        check_exemplars(list(exemplars), original_size)
        tokens = [self.tokens(p, f"phrases[{i}]") if p is not None else self.tokens(BOX_ONLY_PHRASE)
                  for i, p in enumerate(phrases)]
        features = self.text_features(tokens, scope)
        boxes = normalized_boxes(list(exemplars), original_size)
        positive = np.array([e.positive for e in exemplars], bool)
        return [self.detect(arrays, t, f, boxes, positive, threshold, original_size)
                for t, f in zip(tokens, features)]
