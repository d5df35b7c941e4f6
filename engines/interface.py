"""The contract between the exported graphs and the runtimes that run them: the graphs' tensor names, declared
once (the exporter writes them, both backends feed and read them), and the two interfaces a backend provides.

An image's embedding is one or more named arrays, as the model directory's manifest lays them out
(`Manifest.embedding_layout`): SAM's is `image_embeddings` alone; SAM 2.1's adds the two high-resolution
feature maps its mask head uses (`SAM2_ENCODER_OUTPUTS`). The SAM path passes its one array as before; every
family accepts the mapping `{name: array}` (`Embedding`), so a caller may hold embeddings as named arrays
throughout (`Encoder.encode_arrays` → store → `Decoder.decode`)."""

from __future__ import annotations

from typing import Mapping, Protocol, Union

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

# SAM 2.1 (model family "sam2.1"). Encoder: `images` (B, 3, 1024, 1024) → the image embedding (B, 256, 64, 64)
# with `no_mem_embed` added, and the backbone's stride-4 and stride-8 maps through the mask decoder's conv_s0
# and conv_s1, (B, 32, 256, 256) and (B, 64, 128, 128), as SAM2ImagePredictor.set_image keeps them.
SAM2_ENCODER_OUTPUTS = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
# Decoder: one image's three arrays (batch 1) and B prompts → DECODER_OUTPUTS for all four mask tokens.
SAM2_DECODER_INPUTS = [*SAM2_ENCODER_OUTPUTS, "point_coords", "point_labels", "mask_input", "has_mask_input"]

FAMILIES = ("sam", "sam2.1")

# An image's embedding as a decoder takes it: SAM's one (1, C, E, E) array, or the named arrays of the
# manifest's layout, each with batch 1.
Embedding = Union[np.ndarray, Mapping[str, np.ndarray]]


def encoder_outputs(family: str) -> list[str]:
    """The encoder graph's outputs, which are the embedding's arrays, for a model family."""
    return SAM2_ENCODER_OUTPUTS if family == "sam2.1" else ENCODER_OUTPUTS


def decoder_inputs(family: str) -> list[str]:
    """The general decoder graph's inputs for a model family: the embedding's arrays, then the prompts'."""
    return SAM2_DECODER_INPUTS if family == "sam2.1" else DECODER_INPUTS


class Encoder(Protocol):
    run_size: int  # images per engine run: the worker stores each run's embeddings as soon as it is done

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) prepared images → (B, C, E, E) embeddings: a one-array family's (SAM's) whole
        embedding; a family of several arrays (SAM 2.1) raises, its embedding is `encode_arrays`'."""

    def encode_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) prepared images → the embedding's named arrays, each (B, *shape) float32, in the
        order and with the shapes of the manifest's `embedding_layout` (SAM: {"image_embeddings": ...})."""


class Decoder(Protocol):
    prompt_batch: int  # the prompts per run this backend does best (the automatic grid uses it)

    def prepare(self, embedding: Embedding) -> dict | None:
        """The per-image work, once per image (kept with the embedding), or None."""

    def decode(self, embedding: Embedding, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray,
               has_mask_input: np.ndarray, features: dict | None = None,
               extent: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(iou_predictions (B, 4), low_res_masks (B, 4, M, M)) for all four mask tokens; with `extent`
        (rows, columns of embedding cells) the masks may cover only that top-left part (4·rows, 4·columns)."""
