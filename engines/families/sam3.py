"""SAM 3: one ViT per image feeding two heads. Its interactive head is SAM 2.1's prompt decoder on a 72² grid
(1008-px input, 14-px patches), so points, boxes and refinement are SAM 2.1's, with the hole filling its
predictor does by default (`SAM3InteractiveImagePredictor`: holes of up to 256 low-res cells). Its concept
head (phrases and exemplar boxes → every instance) is `engines/concepts.py`. The image is resized on uint8,
stretched to the square (`sam3_transforms`). It has no automatic generator. Its PyTorch encoder (GPU nodes) is
`torch_sam3`'s."""

from __future__ import annotations

import numpy as np

from .. import sam2_transforms as t
from . import Family
from .sam2 import Sam2

MAX_HOLE_AREA = 256  # SAM3InteractiveImagePredictor's default (SAM 2.1's predictor: 0)


class Sam3(Sam2):
    name = "sam3"
    # the interactive head's arrays (SAM 2.1's layout), then the concept detector's feature pyramid
    arrays = ("image_embeddings", "high_res_feats_0", "high_res_feats_1", "fpn_0", "fpn_1", "fpn_2")
    decoder_arrays = arrays[:3]
    concept_arrays = arrays[3:]
    generator_defaults = {}
    generator_options = {}
    no_generator = "SAM 3 has no automatic mask generator (its package defines none for images); ask SegmentConcept " \
                "for every instance of a phrase"
    export_module = "maskserve.build.sam3_export"
    backends = ("onnxruntime", "torch")  # no TensorRT build yet
    manifest_fields, model_version = Family.manifest_fields, Family.model_version

    def prepare_image(self, image, image_size, mean, std):
        from .. import sam3_transforms

        return sam3_transforms.preprocess(image, image_size, mean, std)

    def upscale_logits(self, logits, original_size, image_size, mask_size):
        filled = np.stack([t.fill_holes_and_sprinkles(x, MAX_HOLE_AREA, 0) for x in np.asarray(logits, np.float32)])
        return t.upscale_logits(filled, original_size)

    def upscale_map(self, logits, original_size, image_size, mask_size):
        return t.upscale_map(t.fill_holes_and_sprinkles(logits, MAX_HOLE_AREA, 0), original_size)

    def torch_encoder(self, model_dir, state, part, dtype, attention, device):
        from ..model_dir import ModelDirError
        from ..torch_sam3 import VisionEncoder

        arch = part.get("architecture")
        if not arch:
            raise ModelDirError(f"{model_dir}: a SAM 3 torch encoder needs the manifest's encoder.architecture")
        net = VisionEncoder.from_state_dict(state, arch, dtype, device)
        return net, (arch["image_size"], arch["d_model"], arch["image_size"] // arch["patch_size"])


FAMILY = Sam3()
