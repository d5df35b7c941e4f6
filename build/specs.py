"""The SAM model family as data: architecture sizes and where Meta publishes each checkpoint.

Kept free of torch so that `maskserve models pull` and the serving side can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    # Published checkpoint (None for models that are trained in this repository).
    checkpoint_file: str | None = None
    checkpoint_bytes: int | None = None
    checkpoint_md5: str | None = None
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        return (self.prompt_embed_dim, self.embedding_size, self.embedding_size)

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution logits the decoder returns and accepts back as mask input."""
        return 4 * self.embedding_size

    @property
    def checkpoint_url(self) -> str | None:
        return CHECKPOINT_BASE_URL + self.checkpoint_file if self.checkpoint_file else None


MODEL_SPECS: dict[str, ModelSpec] = {
    "vit_b": ModelSpec(
        "vit_b", 768, 12, 12, (2, 5, 8, 11),
        checkpoint_file="sam_vit_b_01ec64.pth", checkpoint_bytes=375_042_383,
        checkpoint_md5="01ec64d29a2fca3f0661936605ae66f8",
    ),
    "vit_l": ModelSpec(
        "vit_l", 1024, 24, 16, (5, 11, 17, 23),
        checkpoint_file="sam_vit_l_0b3195.pth", checkpoint_bytes=1_249_524_607,
        checkpoint_md5="0b3195507c641ddb6910d2bb5adee89c",
    ),
    "vit_h": ModelSpec(
        "vit_h", 1280, 32, 16, (7, 15, 23, 31),
        checkpoint_file="sam_vit_h_4b8939.pth", checkpoint_bytes=2_564_550_879,
        checkpoint_md5="4b8939a88964f0f4ff5f5b2642c598a6",
    ),
    # SAM's architecture shrunk to train on two CPU cores: 256-pixel input, 8-pixel patches, 64-wide prompts.
    # It ships with the repository as the offline default (see build/tiny/).
    "tiny": ModelSpec(
        "tiny", 64, 4, 2, (3,),
        image_size=512, patch_size=8, window_size=8, prompt_embed_dim=64, mask_in_chans=16,
        decoder_depth=2, decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64,
    ),
}


class UnknownModelType(ValueError):
    pass


def get_spec(model_type: str) -> ModelSpec:
    try:
        return MODEL_SPECS[model_type]
    except KeyError:
        raise UnknownModelType(
            f"unknown model type {model_type!r}; known types: {', '.join(MODEL_SPECS)}"
        ) from None
