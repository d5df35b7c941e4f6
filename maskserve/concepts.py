"""`maskserve.ConceptSegmenter`: SAM 3's concept prompts with `Sam3Processor`'s verbs — in process on a SAM 3 model
directory, or over a `Client` (SegmentConcept; the image is encoded once, on the encoder pool).

As the processor: `state = set_image(image)`; `set_text_prompt(phrase, state)` and `add_geometric_prompt(box,
label, state)` (box: cx, cy, w, h normalised to [0, 1]; exemplars accumulate; a prompt of boxes alone is the
phrase "visual") answer in `state`: "masks" (n, 1, H, W) bool, "boxes" (n, 4) x0, y0, x1, y1 pixels, "scores"
(n,), and in process "masks_logits" (n, 1, H, W), the mask probabilities. `set_confidence_threshold` filters again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


EDGE = 1e-6  # how far past the image's edge a normalised box may reach (float rounding), then clipped to it


class ConceptSegmenter:
    def __init__(self, model_dir: str | Path | None = None, *, client=None, confidence_threshold: float | None = None,
                 threads: int | None = None) -> None:
        self.client = client
        if client is None:
            from maskserve.engines.concepts import ConceptModel
            from maskserve.engines.predictor import Predictor

            self.predictor = Predictor(model_dir, threads=threads)  # the encoder; its interactive head too
            self.model = ConceptModel(self.predictor.model.directory, self.predictor.manifest, threads)
            default = self.model.threshold
        else:
            default = None  # the served model's
        self.confidence_threshold = default if confidence_threshold is None else float(confidence_threshold)

    def set_image(self, image, state: dict | None = None) -> dict:
        """An (H, W, 3) uint8 RGB array, a PIL image, or an image file (bytes or path)."""
        from maskserve.engines.predictor import read_image

        state = {} if state is None else state
        image = np.asarray(image) if not isinstance(image, (bytes, str, Path)) else image
        if self.client is None:
            self.predictor.set_image(image)
            state["embedding"] = self.predictor.get_image_arrays()
            state["original_height"], state["original_width"] = self.predictor.original_size
        else:
            rgb = read_image(image) if not isinstance(image, np.ndarray) else image
            state["image_id"] = self.client.encode(image)
            state["original_height"], state["original_width"] = rgb.shape[:2]
        state.pop("phrase", None)  # the processor keeps the boxes across images, not the text
        return state

    def set_text_prompt(self, prompt: str, state: dict) -> dict:
        self._require(state)
        state["phrase"] = prompt
        state.setdefault("exemplars", [])
        return self._run(state)

    def add_geometric_prompt(self, box, label: bool, state: dict) -> dict:
        """An exemplar box, cx, cy, w, h normalised to the image, positive (True) or negative (False); refused
        (PromptError) unless finite, of some extent and inside the image, in process as the service refuses it."""
        self._require(state)
        box = np.asarray(box, np.float64).reshape(4)
        cx, cy, bw, bh = box
        edges = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        if not (np.isfinite(box).all() and bw > 0 and bh > 0 and min(edges) >= -EDGE and max(edges) <= 1 + EDGE):
            from maskserve.engines.prompts import PromptError

            field = f"exemplars[{len(state.get('exemplars', []))}]"
            raise PromptError(f"box {tuple(float(v) for v in box)} (cx, cy, w, h normalised) must lie inside the "
                              "image, with a positive width and height", field)
        state.setdefault("phrase", None)
        state.setdefault("exemplars", []).append((box.astype(np.float32), bool(label)))
        return self._run(state)

    def set_confidence_threshold(self, threshold: float, state: dict | None = None) -> dict | None:
        self.confidence_threshold = float(threshold)
        if state is not None and "boxes" in state:
            return self._run(state)
        return state

    def reset_all_prompts(self, state: dict) -> None:
        for key in ("phrase", "exemplars", "boxes", "masks", "masks_logits", "scores"):
            state.pop(key, None)

    def _require(self, state: dict) -> None:
        if "embedding" not in state and "image_id" not in state:
            raise ValueError("You must call set_image before set_text_prompt")

    def _run(self, state: dict) -> dict:
        size = (state["original_height"], state["original_width"])
        exemplars = state.get("exemplars", [])
        if self.client is None:
            from maskserve.engines import concepts

            m = self.model
            tokens = m.tokens(state["phrase"] if state.get("phrase") is not None else concepts.BOX_ONLY_PHRASE)
            (features,) = m.text_features([tokens])
            boxes = np.array([b for b, _ in exemplars], np.float32).reshape(-1, 4)
            found = m.detect(state["embedding"], tokens, features, boxes, np.array([p for _, p in exemplars], bool),
                             self.confidence_threshold, size)
            logits = [found.full_logits(size, i) for i in range(len(found.scores))]
            probabilities = np.array([concepts.probabilities(x) for x in logits], np.float32).reshape(-1, 1, *size)
            state["masks_logits"] = probabilities
            state["masks"] = probabilities > np.float32(0.5)
            state["boxes"], state["scores"] = found.boxes, found.scores
            return state
        h, w = size
        scale = np.array([w, h, w, h], np.float64)
        pixel = [tuple(np.clip(np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * scale, 0, scale))
                 for (cx, cy, bw, bh), _ in ((b.astype(np.float64), p) for b, p in exemplars)]  # within float noise
        (answer,) = self.client.segment_concept([state["phrase"]] if state.get("phrase") is not None else [],
                                                [(b, p) for b, (_, p) in zip(pixel, exemplars)],
                                                image=state["image_id"],
                                                confidence_threshold=self.confidence_threshold)
        state["masks"] = answer.masks.reshape(-1, 1, *size)
        state["boxes"], state["scores"] = answer.boxes, answer.scores
        return state
