"""The contract between the exported graphs and the runtimes that run them: the graphs' tensor names, declared
once (the exporter writes them, both backends feed and read them), and the two interfaces a backend provides."""

from __future__ import annotations

from typing import Protocol

import numpy as np

# The encoder graph: normalised, padded images → embeddings.
ENCODER_INPUTS = ["images"]  # (B, 3, S, S) float32
ENCODER_OUTPUTS = ["image_embeddings"]  # (B, C, E, E) float32
# The general decoder graph: one image's embedding, a batch of prompts.
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["iou_predictions", "low_res_masks"]  # (B, 4), (B, 4, M, M)
# The split decoder (CPU): the image's share once (image graph), then prompts without a mask input (points graph).
IMAGE_FEATURES = ["image_tokens", "image_keys", "image_values", "image_queries"]
POINTS_INPUTS = [*IMAGE_FEATURES, "point_coords", "point_labels", "mask_extent"]


class Encoder(Protocol):
    run_size: int  # images per engine run: the worker stores each run's embeddings as soon as it is done

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) prepared images → (B, C, E, E) embeddings."""


class Decoder(Protocol):
    prompt_batch: int  # the prompts per run this backend does best (the automatic grid uses it)

    def prepare(self, embedding: np.ndarray) -> dict | None:
        """The per-image work, once per image (kept with the embedding), or None."""

    def decode(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray,
               has_mask_input: np.ndarray, features: dict | None = None,
               extent: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(iou_predictions (B, 4), low_res_masks (B, 4, M, M)) for all four mask tokens; with `extent`
        (rows, columns of embedding cells) the masks may cover only that top-left part (4·rows, 4·columns)."""
