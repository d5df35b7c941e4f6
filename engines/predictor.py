"""`Predictor`: the in-process façade with `segment_anything.SamPredictor`'s interface, without torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import families, load, prompts


def read_image(image) -> np.ndarray:
    """An image argument (an (H, W, 3) uint8 array, or a file's bytes or path) → the (H, W, 3) uint8 array."""
    from maskserve.client.messages import image_input
    from maskserve.service.images import decode_file

    image = image_input(image)
    return decode_file(image) if isinstance(image, bytes) else image


class Predictor:
    """Drop-in for `SamPredictor`: `set_image` once, then `predict` for as many prompts as you like.

    `Predictor()` uses the tiny model that ships with maskserve; pass a model directory made by
    `maskserve build` for a real checkpoint. A SAM 2.1 model directory answers as `SAM2ImagePredictor`
    (its pre-processing, single-mask choice and clamped low-res logits): the directory's model family decides.
    """

    def __init__(self, model_dir: str | Path | None = None, *, threads: int | None = None) -> None:
        try:
            self.model = load(model_dir, threads=threads)
        except ModuleNotFoundError as exc:
            from maskserve import SERVER_PACKAGES, needs_server

            if exc.name not in SERVER_PACKAGES:
                raise
            raise needs_server("maskserve.Predictor") from None
        self.manifest = self.model.manifest
        self.family = families.of(self.manifest)
        self.reset_image()

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Compute the embedding of an (H, W, 3) uint8 image, or of an image file (its bytes or its path:
        decoded upright by EXIF, as the service decodes it)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = read_image(image)
        if image_format == "BGR":
            image = image[..., ::-1]
        x = prompts.prepare_image(image, self.manifest)
        self.set_embedding(self.model.encoder.encode_arrays(x[None]), image.shape[:2])

    def set_embedding(self, embedding, original_size: tuple[int, int]) -> None:
        """Use an embedding computed elsewhere (the encoder pool) for an image of `original_size` (H, W): the
        mapping of the model's named arrays (a one-array model's (1, C, E, E) array is taken as that array)."""
        if not isinstance(embedding, Mapping) and len(self.family.arrays) == 1:
            embedding = {self.family.arrays[0]: embedding}
        self.embedding = prompts.embedding_arrays(embedding, self.manifest)
        self.prepared = self.model.decoder.prepare(self.embedding)
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = self.family.input_size(self.original_size, self.manifest.image_size)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """(1, C, E, E): the image embedding (for SAM 2.1, its `image_embeddings` array, as the reference's)."""
        self._require_image()
        return self.embedding[self.family.arrays[0]]

    def get_image_arrays(self) -> dict[str, np.ndarray]:
        """The whole embedding as the model's named arrays, each (1, *shape)."""
        self._require_image()
        return dict(self.embedding)

    def reset_image(self) -> None:
        self.is_image_set = False
        self.embedding = self.prepared = None
        self.original_size = None
        self.input_size = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns masks (C, H, W) bool (float32 logits with `return_logits`), iou_predictions (C,) and
        low_res_logits (C, M, M); C is 3 with `multimask_output`, else 1."""
        self._require_image()
        prompt = prompts.Prompt(point_coords, point_labels, box, mask_input)
        (answer,) = prompts.decode(self.model.decoder, self.manifest, self.embedding, self.original_size,
                                   [prompt], multimask_output, prepared=self.prepared)
        logits = prompts.full_resolution_logits(answer.mask_logits, self.manifest, self.original_size)
        masks = logits if return_logits else logits > 0.0
        return masks, answer.iou_predictions, answer.low_res_logits

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
