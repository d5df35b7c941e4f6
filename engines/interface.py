"""The contract between the exported graphs and the runtimes that run them: the graphs' tensor names, declared
once (the exporter writes them, both backends feed and read them), and the two interfaces a backend provides.

An image's embedding is always its named arrays (`EmbeddingArrays`), as the model family lays them out
(`families.Family.arrays`, recorded in the manifest's `embedding_layout`): SAM's is `image_embeddings`
alone; SAM 2.1's adds the two high-resolution feature maps its mask head uses. Encoder → store → decoder
pass that mapping."""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np

# The encoder graph: normalised, padded images → the embedding's arrays (the family's `arrays`).
ENCODER_INPUTS = ["images"]  # (B, 3, S, S) float32
# The general decoder graph: one image's embedding arrays (batch 1), a batch of prompts (the family's
# `decoder_inputs`) → all four mask tokens.
PROMPT_INPUTS = ["point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["iou_predictions", "low_res_masks"]  # (B, 4), (B, 4, M, M)
# The split decoder (CPU, SAM): the image's share once (image graph), then prompts without a mask input.
IMAGE_FEATURES = ["image_tokens", "image_keys", "image_values", "image_queries"]
POINTS_INPUTS = [*IMAGE_FEATURES, "point_coords", "point_labels", "mask_extent"]

# An image's embedding as encoders give it, the store keeps it and decoders take it: {name: (1, *shape)}.
EmbeddingArrays = Mapping[str, np.ndarray]


class Encoder(Protocol):
    run_size: int  # images per engine run: the worker stores each run's embeddings as soon as it is done

    def encode_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) prepared images → the embedding's named arrays, each (B, *shape) float32, in the
        order and with the shapes of the manifest's `embedding_layout` (SAM: {"image_embeddings": ...})."""


class Decoder(Protocol):
    prompt_batch: int  # the prompts per run this backend does best (the automatic grid uses it)

    def prepare(self, embedding: EmbeddingArrays) -> dict | None:
        """The per-image work, once per image (kept with the embedding), or None."""

    def decode(self, embedding: EmbeddingArrays, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray,
               has_mask_input: np.ndarray, prepared: dict | None = None,
               extent: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(iou_predictions (B, 4), low_res_masks (B, 4, M, M)) for all four mask tokens; with `extent`
        (rows, columns of embedding cells) the masks may cover only that top-left part (4·rows, 4·columns)."""
