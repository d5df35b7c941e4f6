"""SAM (and the tiny model, and every model with SAM's graphs): longest side resized to the square, padded
bottom-right, one embedding array; single-mask answers are token 0; the generator cleans full-size masks."""

from __future__ import annotations

import hashlib


from .. import transforms
from . import FORMAT, Family


class Sam(Family):
    name = "sam"
    arrays = ("image_embeddings",)
    transforms = transforms
    generator_defaults = {"pred_iou_thresh": 0.88}
    extra_prompt_points = 2  # a box's corners, or one padding point
    export_module = "maskserve.build.export"
    full_size_cleanup = True

    def prepare_image(self, image, image_size, mean, std):
        return transforms.preprocess(image, image_size, mean, std)[0]

    def input_size(self, original_size, image_size):
        return transforms.resized_shape(*original_size, image_size)

    def choose(self, iou, low, multimask):
        tokens = slice(1, None) if multimask else slice(0, 1)
        return iou[:, tokens], low[:, tokens]

    def upscale_logits(self, logits, original_size, image_size, mask_size):
        return transforms.upscale_logits(logits, self.input_size(original_size, image_size), original_size,
                                         image_size, mask_size)

    def upscale_map(self, logits, original_size, image_size, mask_size):
        return transforms.upscale_map(logits, self.input_size(original_size, image_size), original_size,
                                      image_size, mask_size)

    def mask_extent(self, original_size, image_size, mask_size):
        return transforms.mask_extent(self.input_size(original_size, image_size), image_size, mask_size)

    def torch_encoder(self, model_dir, state, part, dtype, attention, device):
        from ..torch_backend import SamViT

        net = SamViT.from_state_dict(state, dtype, attention, device)
        return net, tuple(net.config[k] for k in ("image_size", "out_chans", "grid"))

    def manifest_fields(self, layout):
        """Nothing: SAM's manifests predate families (no family means SAM), and its model version keeps its key."""
        return {}

    def model_version(self, model_type, checkpoint_sha256, layout):
        """SAM's key predates layouts and other families: its one array's shape (kept, so that embeddings
        stored before stay readable)."""
        key = f"{model_type}:{checkpoint_sha256}:{tuple(layout[0]['shape'])}:{FORMAT}"
        return f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


FAMILY = Sam()
