"""The model types as data (SAM, MobileSAM, SAM 2.1, SAM 3): architecture sizes, embedding layouts and where their
publishers put each checkpoint.

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
    checkpoint_sha256: str | None = None
    family: str = "sam"
    # The automatic generator's recommended defaults for the model (the manifest's `generator`): where the
    # reference's thresholds do not suit its predicted IoUs and stability.
    generator: tuple[tuple[str, float], ...] = ()

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
    def embedding_layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """The per-image embedding as (name, shape, dtype) arrays: SAM's is one."""
        return (("image_embeddings", self.embedding_shape, "float32"),)

    @property
    def checkpoint_url(self) -> str | None:
        return CHECKPOINT_BASE_URL + self.checkpoint_file if self.checkpoint_file else None


# MobileSAM's authors publish one checkpoint, in their repository's git tree; this commit pins it.
MOBILE_SAM_BASE_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/34bbbfdface3c18e5221aa7de6032d7220c6c6a1/weights/"


@dataclass(frozen=True)
class MobileSamSpec(ModelSpec):
    """MobileSAM: SAM's prompt encoder and mask decoder (ViT-B's sizes, unchanged) behind TinyViT, a 5.7 M-parameter
    image encoder distilled to reproduce SAM's embedding. The architecture is `mobile_sam`'s `vit_t`; the
    encoder_* fields describe TinyViT's last stage (width, heads) and its depth over all stages."""

    family: str = "mobile_sam"
    # The file's git object id in the authors' repository (sha1 of "blob <size>\0" + content): the one digest
    # they publish, in effect.
    checkpoint_git_blob: str | None = None

    @property
    def checkpoint_url(self) -> str:
        return MOBILE_SAM_BASE_URL + self.checkpoint_file


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
    "vit_t": MobileSamSpec(
        "vit_t", 320, 12, 10, (),
        checkpoint_file="mobile_sam.pt", checkpoint_bytes=40_728_226,
        checkpoint_git_blob="7ef2d090979fd9853adf17b7a99c8b94a1c5a6a7",
    ),
    # SAM's architecture shrunk to train on two CPU cores: 256-pixel input, 8-pixel patches, 64-wide prompts.
    # It ships with the repository as the offline default (see build/tiny/).
    "tiny": ModelSpec(
        "tiny", 64, 4, 2, (3,),
        image_size=512, patch_size=8, window_size=8, prompt_embed_dim=64, mask_in_chans=16,
        decoder_depth=2, decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64,
        # Its predicted IoUs sit below 0.88 and its masks' edges are soft: with the reference's thresholds the
        # bundled photo gets no mask; with these, 20 (32 × 32 grid: 1648 of 3072 candidates removed by IoU,
        # 1170 by stability, 234 by NMS).
        generator=(("pred_iou_thresh", 0.6), ("stability_score_thresh", 0.8)),
    ),
}


SAM2_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class Sam2Spec:
    """A SAM 2.1 image model: Meta's Hiera backbone and FPN neck, SAM's prompt encoder and a mask decoder that
    adds two high-resolution feature maps. The architecture is the `sam2` package's Hydra config."""

    name: str
    config: str  # in the sam2 package, for sam2.build_sam.build_sam2
    trunk_embed_dim: int  # Hiera's first-stage width (the patch embedding's output channels)
    trunk_depth: int  # Hiera blocks over all stages
    checkpoint_file: str
    checkpoint_bytes: int | None = None
    checkpoint_sha256: str | None = None
    checkpoint_md5: str | None = None  # not published; the sha256 is checked instead
    generator: tuple[tuple[str, float], ...] = ()  # recommended generator defaults (see ModelSpec)
    family: str = "sam2.1"
    image_size: int = 1024  # every image is resized to this square, whatever its aspect ratio
    prompt_embed_dim: int = 256
    # SAM2Transforms normalises [0, 1] pixels by ImageNet's mean and std; these are those ×255, as SAM's.
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def encoder_embed_dim(self) -> int:
        return self.trunk_embed_dim

    @property
    def encoder_depth(self) -> int:
        return self.trunk_depth

    @property
    def embedding_size(self) -> int:
        return self.image_size // 16  # the backbone's stride-16 level

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        return (self.prompt_embed_dim, self.embedding_size, self.embedding_size)

    @property
    def mask_input_size(self) -> int:
        return 4 * self.embedding_size

    @property
    def embedding_layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """The per-image embedding as (name, shape, dtype) arrays, in the encoder graph's output order
        (engines.families.sam2.Sam2.arrays): the image embedding, then the stride-4 and stride-8 maps
        after the mask decoder's conv_s0 (C/8 channels) and conv_s1 (C/4)."""
        c, e = self.prompt_embed_dim, self.embedding_size
        return (("image_embeddings", (c, e, e), "float32"),
                ("high_res_feats_0", (c // 8, 4 * e, 4 * e), "float32"),
                ("high_res_feats_1", (c // 4, 2 * e, 2 * e), "float32"))

    @property
    def checkpoint_url(self) -> str:
        return SAM2_CHECKPOINT_BASE_URL + self.checkpoint_file


# Sizes and sha256 of Meta's files as published by third parties (Hugging Face LFS pointers of mirrors of
# dl.fbaipublicfiles.com, and projects that pin the same digests for the same URLs); Meta lists neither.
SAM2_SPECS: dict[str, Sam2Spec] = {
    "sam2.1_hiera_tiny": Sam2Spec(
        "sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", 96, 12, "sam2.1_hiera_tiny.pt",
        checkpoint_bytes=156_008_466,
        checkpoint_sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    ),
    "sam2.1_hiera_small": Sam2Spec(
        "sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", 96, 16, "sam2.1_hiera_small.pt",
        checkpoint_bytes=184_416_285,
        checkpoint_sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    ),
    "sam2.1_hiera_base_plus": Sam2Spec(
        "sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", 112, 24, "sam2.1_hiera_base_plus.pt",
        checkpoint_bytes=323_606_802,
        checkpoint_sha256="a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    ),
    "sam2.1_hiera_large": Sam2Spec(
        "sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", 144, 48, "sam2.1_hiera_large.pt",
        checkpoint_bytes=898_083_611,
        checkpoint_sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
    ),
}

@dataclass(frozen=True)
class Sam3Spec:
    """SAM 3's image model: a 1008-px Perception Encoder ViT shared by a concept detector (phrases and exemplar
    boxes → every instance) and an interactive head with SAM 2.1's prompt decoder. Meta's weights are gated on
    Hugging Face under the SAM License: `maskserve models pull sam3` sends $HF_TOKEN, of an account that has
    accepted it. The architecture is read from the checkpoint (build/sam3_export.Sam3Architecture)."""

    name: str = "sam3"
    checkpoint_file: str = "sam3.pt"
    # As pinned by third parties for this URL (Meta publishes neither); a file that differs is refused.
    checkpoint_bytes: int | None = 3_450_062_241
    checkpoint_sha256: str | None = "9999e2341ceef5e136daa386eecb55cb414446a00ac2b55eb2dfd2f7c3cf8c9e"
    checkpoint_md5: str | None = None
    checkpoint_token_env: str = "HF_TOKEN"  # the gated download's bearer token
    family: str = "sam3"
    image_size: int = 1008  # stretched to this square, 14-px patches: a 72² grid
    prompt_embed_dim: int = 256
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)  # Sam3Processor: (x/255 − 0.5) / 0.5
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    generator: tuple[tuple[str, float], ...] = ()
    context_length: int = 32  # tokens per phrase
    box_slots: int = 16  # exemplar boxes per concept prompt (the detector graph's fixed slots)
    confidence_threshold: float = 0.5  # Sam3Processor's default

    @property
    def embedding_size(self) -> int:
        return self.image_size // 14

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        return (self.prompt_embed_dim, self.embedding_size, self.embedding_size)

    @property
    def mask_input_size(self) -> int:
        return 4 * self.embedding_size

    @property
    def embedding_layout(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """The interactive head's arrays (SAM 2.1's layout at 72²), then the detector's feature pyramid: 132.7 MB
        an image in float32."""
        c, e = self.prompt_embed_dim, self.embedding_size
        return (("image_embeddings", (c, e, e), "float32"),
                ("high_res_feats_0", (c // 8, 4 * e, 4 * e), "float32"),
                ("high_res_feats_1", (c // 4, 2 * e, 2 * e), "float32"),
                *((f"fpn_{i}", (c, 4 * e >> i, 4 * e >> i), "float32") for i in range(3)))

    @property
    def checkpoint_url(self) -> str:
        return "https://huggingface.co/facebook/sam3/resolve/main/" + self.checkpoint_file


SAM3_SPECS: dict[str, Sam3Spec] = {"sam3": Sam3Spec()}

ALL_SPECS: dict[str, ModelSpec | Sam2Spec | Sam3Spec] = {**MODEL_SPECS, **SAM2_SPECS, **SAM3_SPECS}


# Other names a model type is known by: its publisher's.
ALIASES = {"mobile_sam": "vit_t"}


class UnknownModelType(ValueError):
    pass


def get_spec(model_type: str) -> ModelSpec | Sam2Spec | Sam3Spec:
    """The spec of a model type or of one of its `ALIASES`; its `name` is the model type."""
    try:
        return ALL_SPECS[ALIASES.get(model_type, model_type)]
    except KeyError:
        raise UnknownModelType(
            f"unknown model type {model_type!r}; known types: {', '.join(ALL_SPECS)}"
        ) from None
