"""SAM 2.1 (image models): resized straight to the square, three embedding arrays (the image embedding with
`no_mem_embed`, two high-resolution maps), its prompt order, the stability fallback of single-mask answers,
low-res logits returned clamped to ±32 (the masks come from the unclamped ones); its generator keeps the grid
in float32, has options of its own and cleans holes and specks on the low-res logits."""

from __future__ import annotations

import numpy as np

from .. import sam2_transforms as t
from . import Family


class Sam2(Family):
    name = "sam2.1"
    arrays = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
    transforms = t
    generator_defaults = {"pred_iou_thresh": 0.8}
    generator_options = {"mask_threshold": 0.0, "multimask_output": True, "use_m2m": False}
    generator_grid_dtype = np.float32
    extra_prompt_points = 3  # a box's corners and always one padding point
    export_module = "maskserve.build.sam2_export"

    def prepare_image(self, image, image_size, mean, std):
        return t.preprocess(image, image_size, mean, std)

    def input_size(self, original_size, image_size):
        return image_size, image_size

    def choose(self, iou, low, multimask):
        return (iou[:, 1:], low[:, 1:]) if multimask else t.select_single_mask(iou, low)

    def returned_logits(self, low):
        return t.clamp_logits(low)

    def upscale_logits(self, logits, original_size, image_size, mask_size):
        return t.upscale_logits(logits, original_size)

    def upscale_map(self, logits, original_size, image_size, mask_size):
        return t.upscale_map(logits, original_size)

    def low_res_cleanup(self, low, min_area):
        return t.fill_holes_and_sprinkles(low, min_area) if min_area > 0 else low

    def torch_encoder(self, model_dir, state, part, dtype, attention, device):
        from ..model_dir import ModelDirError
        from ..torch_hiera import HieraEncoder

        if "architecture" not in part:
            raise ModelDirError(f"{model_dir}: a SAM 2.1 torch encoder needs the manifest's encoder.architecture")
        net = HieraEncoder.from_state_dict(state, part["architecture"], dtype, device)
        size = part["architecture"]["image_size"]
        return net, (size, part["architecture"]["d_model"], size // 16)


FAMILY = Sam2()
