"""ONNX Runtime runners for a model directory: the CPU backend, and the reference for the TensorRT one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import families
from .interface import DECODER_OUTPUTS, IMAGE_FEATURES, POINTS_INPUTS
from .model_dir import Manifest


def _session(path: Path, threads: int | None, memory_pattern: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_mem_pattern = memory_pattern
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """Runs the image encoder on pre-processed images, one per run.

    On CPU a batch buys no throughput (each image's GEMMs are already large) while the global-attention
    buffers grow with it: ViT-B measured 8.6–8.9 s and 2.5 GB resident per image alone, 9.7 s per image
    and 4.4 GB as a batch of two. Without ONNX Runtime's memory pattern the arena's blocks are reused from
    the second run on (with it, the first two runs each fault in fresh gigabytes: 12–14 s, 4.3 GB)."""

    run_size = 1  # images per run: the worker stores each as soon as it is done

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.session = _session(Path(model_dir) / manifest.encoder["file"], threads, memory_pattern=False)
        self.outputs = [o.name for o in self.session.get_outputs()]  # the embedding's arrays, layout order

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 → (B, C, E, E) float32."""
        if len(self.outputs) > 1:
            raise TypeError(f"this model's embedding is {len(self.outputs)} arrays ({', '.join(self.outputs)}): "
                            f"use encode_arrays")
        images = np.ascontiguousarray(images, np.float32)
        return np.concatenate([self.session.run(None, {"images": images[i:i + 1]})[0] for i in range(len(images))])

    def encode_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 → {name: (B, *shape) float32} for every array of the embedding."""
        images = np.ascontiguousarray(images, np.float32)
        runs = [self.session.run(None, {"images": images[i:i + 1]}) for i in range(len(images))]
        return {name: np.concatenate([run[k] for run in runs]) for k, name in enumerate(self.outputs)}


class OnnxDecoder:
    """Runs the prompt decoder on a batch of prompts of equal point count against one embedding.

    Where the model directory has the split decoder (build/export.py), `prepare` does the image's share of
    the work once per image and `decode` given its result answers prompts without a mask input from it."""

    # Prompts per run for many prompts on one image (the automatic grid). Per prompt the decoder's work is
    # the same at any batch (its 4096 image tokens are per prompt), and larger batches leave the caches:
    # points decoder, two threads, interleaved medians, ViT-B 9.2 / 9.5 / 9.8 / 10.0 ms per prompt at
    # 1 / 2 / 4 / 8 (another run: 8.1 / 9.2 / 9.8 / 9.7 at 1 / 4 / 16 / 64), the tiny model 2.42 / 2.36 /
    # 2.49 / 2.67 / 2.82 ms at 1 / 4 / 8 / 16 / 64. Four: within 5 % of the best for both, a quarter of the calls.
    prompt_batch = 4

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        d = manifest.decoder
        self.session = _session(Path(model_dir) / d["file"], threads)
        self.inputs = families.of(manifest).decoder_inputs
        self.arrays = list(families.of(manifest).decoder_arrays)  # the embedding's it reads, then the prompts'
        split = "image_file" in d and "points_file" in d
        self.image_session = _session(Path(model_dir) / d["image_file"], threads) if split else None
        self.points_session = _session(Path(model_dir) / d["points_file"], threads) if split else None
        # Model directories exported before the points decoder took `mask_extent` still run, at full extent.
        self.crops = split and POINTS_INPUTS[-1] in {i.name for i in self.points_session.get_inputs()}
        self.full_extent = np.array(manifest.embedding_shape[1:], np.int64)

    def prepare(self, embedding: Mapping[str, np.ndarray]) -> dict | None:
        """The per-image tensors `decode` takes as `prepared`; None without a split decoder (SAM's)."""
        if self.image_session is None:
            return None
        name = self.arrays[0]
        names = [o.name for o in self.image_session.get_outputs()]
        return dict(zip(names, self.image_session.run(None, {name: embedding[name]})))

    def points_feeds(self, prepared: dict, coords, labels, extent: tuple[int, int] | None = None) -> dict:
        """The split decoder's inputs for prompts without a mask input."""
        feeds = {**prepared, **dict(zip(POINTS_INPUTS[len(IMAGE_FEATURES):], (coords, labels)))}
        if self.crops:
            feeds[POINTS_INPUTS[-1]] = self.full_extent if extent is None else np.array(extent, np.int64)
        return feeds

    def decode(self, embedding, coords, labels, mask_input, has_mask_input, prepared: dict | None = None,
               extent: tuple[int, int] | None = None):
        """Returns (iou_predictions (B, 4), low_res_masks (B, 4, M, M)) for all four mask tokens; the split
        decoder computes only the masks of `extent`'s cells (low_res_masks (B, 4, 4·rows, 4·columns))."""
        if prepared is not None and not np.any(has_mask_input):
            return tuple(self.points_session.run(None, self.points_feeds(prepared, coords, labels, extent)))
        feeds = {name: embedding[name] for name in self.arrays}
        feeds.update(zip(self.inputs[len(self.arrays):], (coords, labels, mask_input, has_mask_input)))
        iou, masks = self.session.run(DECODER_OUTPUTS, feeds)
        return iou, masks
