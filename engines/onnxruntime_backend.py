"""ONNX Runtime runners for a model directory: the CPU backend, and the reference for the TensorRT one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .model_dir import Manifest


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or int(os.environ.get("MASKSERVE_ORT_THREADS", "0")) or None
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """Runs the image encoder on a batch of pre-processed images."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.session = _session(Path(model_dir) / manifest.encoder["file"], threads)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 → (B, C, E, E) float32."""
        return self.session.run(None, {"images": np.ascontiguousarray(images, np.float32)})[0]


class OnnxDecoder:
    """Runs the prompt decoder on a batch of prompts of equal point count against one embedding."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.session = _session(Path(model_dir) / manifest.decoder["file"], threads)

    def decode(self, embedding, coords, labels, mask_input, has_mask_input):
        """Returns (iou_predictions (B, 4), low_res_masks (B, 4, M, M)) for all four mask tokens."""
        iou, masks = self.session.run(None, {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask_input,
            "has_mask_input": has_mask_input,
        })
        return iou, masks
