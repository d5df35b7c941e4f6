"""SAM 3 (Meta's `sam3` package, image model with its interactive head) → a model directory of four ONNX graphs
(for the torch backend, three, and the vision backbone's weights in `encoder.pt`: engines/torch_sam3.py).

`encoder.onnx`, once per image: `images` (1, 3, 1008, 1008) (engines/families/sam3.py prepares them) → the
  interactive head's three arrays in SAM 2.1's layout, `image_embeddings` (1, 256, 72, 72) (with
  `no_mem_embed`), `high_res_feats_0` (1, 32, 288, 288), `high_res_feats_1` (1, 64, 144, 144), then the
  concept detector's feature pyramid `fpn_0` (1, 256, 288, 288), `fpn_1` (1, 256, 144, 144), `fpn_2`
  (1, 256, 72, 72): one ViT run, both necks (`Sam3Processor.set_image`'s `backbone_out`; the 0.5× level is
  dropped by the model itself).
`decoder.onnx`: SAM 2.1's prompt decoder on the interactive head (`sam2_export.Sam2PromptDecoder`, unchanged),
  what `Sam3Image.predict_inst` runs.
`text.onnx`: `tokens` (B, 32) int64 (engines/clip_tokenizer.py) → `text_features` (B, 32, 256); its padding mask
  is `tokens == 0`. It depends on the phrase alone, so the service caches it per phrase.
`detector.onnx`, once per concept prompt: `fpn_0..2`, `text_features` (1, 32, 256), `text_mask` (1, 32) bool,
  exemplar `boxes` (1, K, 4) normalised cx, cy, w, h, `box_labels` (1, K) int64 (1 positive), `box_mask`
  (1, K) bool (True: an empty slot; slots are filled from the left), `threshold` () → `scores` (Q,)
  = sigmoid(logit) · sigmoid(presence), `boxes_cxcywh` (Q, 4), `presence` (), `keep` (n,) int64, the queries
  whose score is above the threshold, and `mask_logits` (n, 288, 288), for those only (all Q = 200 would be
  66 MB a prompt). `Sam3Image.forward_grounding` with its mask head.

What the exporter needs that the package does not give: (1) the ViT's rotary embedding as real cos/sin
buffers (ONNX has no complex numbers; the same arithmetic); (2) the geometry encoder without its point and
mask branches, always empty for the image processor (their zero-size tensors crash the tracer), and boxes in
fixed slots with a padding mask (the tracer bakes a box count into reshapes); (3) on a CPU-only machine, the
three places the package assumes CUDA (`cpu_patches`). Parameters are frozen before tracing: with autograd on,
the trace of the 446 M-parameter ViT keeps its activations (20 GB, measured).

The architecture is read from the checkpoint's shapes (`Sam3Architecture`): Meta's SAM 3 is 1024 wide and 32
deep with a 6-layer detector, and a smaller ViT, text encoder and detector of the same design (the tests'
seeded checkpoints) build the same way.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from maskserve.engines import families
from maskserve.engines.interface import DECODER_OUTPUTS, ENCODER_INPUTS
from maskserve.engines.model_dir import Manifest

from .checkpoint import CheckpointError, key_problems, read_checkpoint_file
from .export import PROMPT_AXES, _export
from .sam2_export import Sam2PromptDecoder, decoder_example_inputs

with warnings.catch_warnings():  # its modules warn on import where there is no CUDA (autocast), and of TorchScript
    warnings.simplefilter("ignore")
    import sam3.model_builder  # noqa: F401 - Meta's package beside the export extra: pip install --no-deps sam3==0.1.4

FAMILY = families.get("sam3")
TEXT_INPUTS, TEXT_OUTPUTS = ["tokens"], ["text_features"]
DETECTOR_INPUTS = ["fpn_0", "fpn_1", "fpn_2", "text_features", "text_mask", "boxes", "box_labels", "box_mask",
                   "threshold"]
DETECTOR_OUTPUTS = ["scores", "boxes_cxcywh", "presence", "keep", "mask_logits"]
VOCABULARY = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges: open_clip ships them, sam3's wheel does not


@dataclass(frozen=True)
class Sam3Architecture:
    """What differs between SAM 3 and a scaled-down model of its design: the ViT's and the text encoder's size,
    and the detector's depth (its fusion encoder and decoder; tests cut them, as most of a concept call's time is
    the fusion encoder's attention over 72² image tokens). Everything is 256 wide after the ViT in any case."""

    vit_dim: int = 1024
    vit_depth: int = 32
    vit_mlp: int = 4736  # 4.625 × 1024
    text_width: int = 1024
    text_layers: int = 24
    fusion_layers: int = 6
    decoder_layers: int = 6

    @property
    def global_blocks(self) -> tuple[int, ...]:
        """Every quarter's last block attends globally (Meta's: 7, 15, 23, 31); the others in 24² windows."""
        q = max(self.vit_depth // 4, 1)
        return tuple(range(q - 1, self.vit_depth, q))

    @classmethod
    def of(cls, state: dict) -> "Sam3Architecture":
        def count(prefix):
            return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

        trunk = "backbone.vision_backbone.trunk."
        text = "backbone.language_backbone.encoder."
        for detector in ("transformer.encoder.layers.", "transformer.decoder.layers."):
            if not count(detector):
                raise CheckpointError(f"not a SAM 3 checkpoint: it has no detector.{detector}* parameters")
        try:
            return cls(vit_dim=state[trunk + "patch_embed.proj.weight"].shape[0], vit_depth=count(trunk + "blocks."),
                       vit_mlp=state[trunk + "blocks.0.mlp.fc1.weight"].shape[0],
                       text_width=state[text + "token_embedding.weight"].shape[1],
                       text_layers=count(text + "transformer.resblocks."),
                       fusion_layers=count("transformer.encoder.layers."),
                       decoder_layers=count("transformer.decoder.layers."))
        except KeyError as exc:
            raise CheckpointError(f"not a SAM 3 checkpoint: it has no {exc.args[0]}") from None


# -- the package on a CPU --------------------------------------------------------------------------------------
_PATCHED = False


def cpu_patches() -> None:
    """Where sam3 0.1.4 assumes CUDA, on a machine without it: the sine position encoding's precomputed cache
    and the decoder's box-bias coordinates are made on "cuda", and the geometry encoder pins a tensor's memory.
    Each is made on the CPU instead (the same values). Once per process; nothing changes where CUDA exists."""
    global _PATCHED
    if _PATCHED or torch.cuda.is_available():
        return
    import sam3.model.decoder as decoder
    import sam3.model.position_encoding as position

    init = position.PositionEmbeddingSine.__init__

    def sine_init(self, *args, precompute_resolution=None, **kwargs):
        init(self, *args, precompute_resolution=None, **kwargs)
        if precompute_resolution is not None:  # the cache the package fills, at strides 4 to 32, on the CPU
            for stride in (4, 8, 16, 32):
                side = precompute_resolution // stride
                self.forward(torch.zeros(1, 1, side, side))

    position.PositionEmbeddingSine.__init__ = sine_init
    coords = decoder.TransformerDecoder._get_coords
    decoder.TransformerDecoder._get_coords = staticmethod(lambda h, w, device: coords(h, w, "cpu"))
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    _PATCHED = True


def vocabulary_path() -> Path:
    """CLIP's BPE merges as open_clip ships them (the export extra installs it)."""
    import open_clip

    return Path(open_clip.__file__).parent / VOCABULARY


def network(arch: Sam3Architecture = Sam3Architecture()):
    """An untrained `Sam3Image` of `arch` with its interactive head, from the package's own builder (its
    factories for the ViT and the text encoder given `arch`'s sizes)."""
    import sam3.model_builder as builder
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT

    cpu_patches()

    def vit(compile_mode=None):
        return ViT(img_size=1008, pretrain_img_size=336, patch_size=14, embed_dim=arch.vit_dim, depth=arch.vit_depth,
                   num_heads=arch.vit_dim // 64, mlp_ratio=arch.vit_mlp / arch.vit_dim, norm_layer="LayerNorm",
                   drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
                   global_att_blocks=arch.global_blocks, rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
                   window_size=24, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
                   return_interm_layers=False, bias_patch_embed=False, compile_mode=compile_mode)

    def text(bpe_path):
        return VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=256, width=arch.text_width,
                             heads=arch.text_width // 64, layers=arch.text_layers)

    def layers(cls, n):
        return lambda *args, **kwargs: cls(*args, **dict(kwargs, num_layers=n))

    names = ("_create_vit_backbone", "_create_text_encoder", "TransformerEncoderFusion", "TransformerDecoder")
    factories = {name: getattr(builder, name) for name in names}
    for name, make in zip(names, (vit, text, layers(builder.TransformerEncoderFusion, arch.fusion_layers),
                                  layers(builder.TransformerDecoder, arch.decoder_layers))):
        setattr(builder, name, make)
    try:
        model = builder.build_sam3_image_model(bpe_path=str(vocabulary_path()), device="cpu", eval_mode=True,
                                               checkpoint_path=None, load_from_HF=False,
                                               enable_inst_interactivity=True)
    finally:
        for name, make in factories.items():
            setattr(builder, name, make)
    return model


# -- Meta's checkpoint format ----------------------------------------------------------------------------------
def image_state(checkpoint: dict) -> dict:
    """Meta's `sam3.pt` (`{"model": ...}` with `detector.*` and `tracker.*` keys) → the image model's state dict,
    as the package's `_load_checkpoint` maps it (the tracker is the interactive head)."""
    if isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    state = {k.replace("detector.", "", 1): v for k, v in checkpoint.items() if k.startswith("detector.")}
    state.update({k.replace("tracker.", "inst_interactive_predictor.model.", 1): v
                  for k, v in checkpoint.items() if k.startswith("tracker.")})
    return state


def load_model(path: str | Path, model_type: str = "sam3"):
    """A SAM 3 checkpoint into the package's image model with its interactive head. Every parameter the image
    model has must be there, in its shape; keys it does not use (the video tracker's) are left, as the
    package's loader leaves them."""
    checkpoint = read_checkpoint_file(path)
    state = image_state(checkpoint) if isinstance(checkpoint, dict) else {}
    if not state:
        raise CheckpointError(f"checkpoint {path} is not a SAM 3 checkpoint (no detector.* parameters)")
    model = network(Sam3Architecture.of(state))
    expected = model.state_dict()
    problems = [p for p in key_problems(state, expected) if "unexpected" not in p]
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit model type {model_type}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def seeded_random_checkpoint(path: str | Path, arch: Sam3Architecture = Sam3Architecture(), seed: int = 0) -> Path:
    """A random SAM 3 of `arch` saved in Meta's format, for tests. What the package leaves uninitialised
    (`torch.empty`: the text encoder's positional embedding and projection) is drawn, and the box head's last
    layer, zero at init, is given small values so that boxes move off their reference points."""
    torch.manual_seed(seed)
    model = network(arch)
    g = torch.Generator().manual_seed(seed + 1)
    text = model.backbone.language_backbone.encoder
    last = model.transformer.decoder.bbox_embed.layers[-1]
    with torch.no_grad():
        text.positional_embedding.copy_(torch.randn(text.positional_embedding.shape, generator=g) * 0.01)
        text.text_projection.copy_(torch.randn(text.text_projection.shape, generator=g) * text.width ** -0.5)
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.01)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.1)
    tracker = "inst_interactive_predictor.model."
    state = {(f"tracker.{k[len(tracker):]}" if k.startswith(tracker) else f"detector.{k}"): v
             for k, v in model.state_dict().items()}
    torch.save({"model": state}, path)
    return Path(path)


# -- the graphs ------------------------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """`set_image`'s `backbone_out` for both heads from one ViT run, the interactive head's first (SAM 2.1's
    arrays: its neck's levels through conv_s0/conv_s1, `no_mem_embed` on the lowest), then the detector's."""

    def __init__(self, model) -> None:
        super().__init__()
        neck = model.backbone.vision_backbone
        tracker = model.inst_interactive_predictor.model
        self.trunk, self.convs, self.sam2_convs = neck.trunk, neck.convs[:3], neck.sam2_convs[:3]
        self.conv_s0, self.conv_s1 = tracker.sam_mask_decoder.conv_s0, tracker.sam_mask_decoder.conv_s1
        self.no_mem_embed = tracker.no_mem_embed

    def forward(self, images):
        x = self.trunk(images)[-1]
        s0, s1, s2 = (conv(x) for conv in self.sam2_convs)
        return (s2 + self.no_mem_embed.reshape(1, -1, 1, 1), self.conv_s0(s0), self.conv_s1(s1),
                *(conv(x) for conv in self.convs))


@contextlib.contextmanager
def real_rotary(model):
    """Each ViT attention's complex `freqs_cis` as cos and sin buffers, and the rotation written on them."""
    from maskserve.engines.torch_sam3 import rotate
    from sam3.model.vitdet import Attention

    patched = [m for m in model.modules() if isinstance(m, Attention) and m.use_rope]
    for m in patched:
        cos, sin = m.freqs_cis.real.float().clone(), m.freqs_cis.imag.float().clone()
        m._apply_rope = lambda q, k, cos=cos, sin=sin: (rotate(q, cos, sin), rotate(k, cos, sin))
    try:
        yield
    finally:
        for m in patched:
            del m._apply_rope


class TextEncoder(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.text = model.backbone.language_backbone

    def forward(self, tokens):
        return self.text.resizer(self.text.encoder(tokens)[1])


def _geometry_boxes_only(self, geo_prompt, img_feats, img_sizes, img_pos_embeds=None):
    """`SequenceGeometryEncoder.forward` for box prompts only (no points, no masks), as the image processor
    prompts it: the boxes' encoding, the CLS token, then the encoder layers."""
    from sam3.model.geometry_encoders import concat_padded_sequences

    image, pos = img_feats[-1], img_pos_embeds[-1]
    h, w = img_sizes[-1]
    grid = self.img_pre_norm(image).permute(1, 2, 0)
    grid = grid.reshape(grid.shape[0], grid.shape[1], h, w)
    emb, mask = self._encode_boxes(boxes=geo_prompt.box_embeddings, boxes_mask=geo_prompt.box_mask,
                                   boxes_labels=geo_prompt.box_labels, img_feats=grid)
    batch = emb.shape[1]
    cls = self.cls_embed.weight.view(1, 1, self.d_model).repeat(1, batch, 1)
    emb, mask = concat_padded_sequences(emb, mask, cls, torch.zeros(batch, 1, dtype=mask.dtype))
    emb = self.norm(self.final_proj(emb))
    for layer in self.encode:
        emb = layer(tgt=emb, memory=image, tgt_key_padding_mask=mask, pos=pos)
    return self.encode_norm(emb), mask


class Detector(nn.Module):
    """`forward_grounding` and the mask head for one concept prompt (a phrase and exemplar boxes in slots);
    masks only for the queries above the threshold."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.position = model.backbone.vision_backbone.position_encoding

    def forward(self, fpn_0, fpn_1, fpn_2, text_features, text_mask, boxes, box_labels, box_mask, threshold):
        from sam3.model.data_misc import FindStage
        from sam3.model.geometry_encoders import Prompt

        m, seg = self.model, self.model.segmentation_head
        fpn = [fpn_0, fpn_1, fpn_2]
        backbone_out = {"backbone_fpn": fpn, "vision_features": fpn_2,
                        "vision_pos_enc": [self.position(f) for f in fpn],
                        "language_features": text_features.transpose(0, 1), "language_mask": text_mask}
        prompt = Prompt(box_embeddings=boxes.transpose(0, 1), box_mask=box_mask, box_labels=box_labels.transpose(0, 1))
        zero = torch.tensor([0])
        find = FindStage(img_ids=zero, text_ids=zero, input_boxes=None, input_boxes_mask=None,
                         input_boxes_label=None, input_points=None, input_points_mask=None)
        m.segmentation_head = None  # everything but the masks; they are made below, for the kept queries only
        try:
            out = m.forward_grounding(backbone_out=backbone_out, find_input=find, find_target=None,
                                      geometric_prompt=prompt)
        finally:
            m.segmentation_head = seg
        encoded = out["prev_encoder_out"]["encoder_out"]
        memory = out["encoder_hidden_states"]
        memory = memory + seg.cross_attend_prompt(query=seg.cross_attn_norm(memory), key=encoded["prompt_before_enc"],
                                                  value=encoded["prompt_before_enc"],
                                                  key_padding_mask=encoded["prompt_mask"])[0]
        pixels = seg.instance_seg_head(seg._embed_pixels(backbone_feats=fpn, image_ids=zero,
                                                         encoder_hidden_states=memory))[0]
        presence = out["presence_logit_dec"][0, 0].sigmoid()
        scores = out["pred_logits"][0, :, 0].sigmoid() * presence
        keep = torch.nonzero(scores > threshold)[:, 0]
        queries = seg.mask_predictor.mask_embed(out["queries"][0])[keep]
        return scores, out["pred_boxes"][0], presence, keep, torch.einsum("qc,chw->qhw", queries, pixels)


@contextlib.contextmanager
def boxes_only_geometry():
    import sam3.model.geometry_encoders as geometry

    forward = geometry.SequenceGeometryEncoder.forward
    geometry.SequenceGeometryEncoder.forward = _geometry_boxes_only
    try:
        yield
    finally:
        geometry.SequenceGeometryEncoder.forward = forward


def _export_large(module, args, path: Path, inputs, outputs, axes) -> None:
    """One .onnx file under protobuf's 2 GB limit (SAM 3's ViT: 1.85 GB), else its weights in `<name>.data`."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        _export(module, args, staged, inputs, outputs, axes)
        if len(list(Path(tmp).iterdir())) == 1:
            staged.replace(path)
        else:
            graph = onnx.load(str(staged), load_external_data=True)
            onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)


@torch.no_grad()
def export_encoder(model, path: Path) -> None:
    with real_rotary(model):
        _export_large(ImageEncoder(model).eval(), (torch.zeros(1, 3, 1008, 1008),), path, ENCODER_INPUTS,
                      list(FAMILY.arrays), None)


@torch.no_grad()
def export_decoder(model, path: Path) -> None:
    tracker = model.inst_interactive_predictor.model
    _export(Sam2PromptDecoder(tracker).eval(), decoder_example_inputs(tracker), path, FAMILY.decoder_inputs,
            DECODER_OUTPUTS, {**PROMPT_AXES, "mask_input": {0: "batch"}, "has_mask_input": {0: "batch"}})


@torch.no_grad()
def export_text(model, path: Path, context: int) -> None:
    tokens = torch.zeros(2, context, dtype=torch.int64)
    tokens[:, :3] = torch.tensor([49406, 320, 49407])
    _export_large(TextEncoder(model).eval(), (tokens,), path, TEXT_INPUTS, TEXT_OUTPUTS,
                  {"tokens": {0: "batch"}, "text_features": {0: "batch"}})


@torch.no_grad()
def export_detector(model, path: Path, context: int, slots: int) -> None:
    g = torch.Generator().manual_seed(0)
    fpn = [torch.randn(1, 256, s, s, generator=g) for s in (288, 144, 72)]
    text_mask = torch.arange(context)[None] >= 4
    boxes = torch.full((1, slots, 4), 0.5)
    labels = torch.zeros(1, slots, dtype=torch.int64)
    labels[0, 0] = 1
    box_mask = torch.arange(slots)[None] >= 2
    args = (*fpn, torch.randn(1, context, 256, generator=g), text_mask, boxes, labels, box_mask, torch.tensor(0.5))
    with boxes_only_geometry():
        _export(Detector(model).eval(), args, path, DETECTOR_INPUTS, DETECTOR_OUTPUTS,
                {"keep": {0: "kept"}, "mask_logits": {0: "kept"}})


def reference_image_encoder(model) -> nn.Module:
    """The official modules that compute what the encoder graph does (the GPU check's fp32 reference)."""
    return ImageEncoder(model).eval()


def write_model_dir(model, spec, checkpoint, model_type, staging, backend, precision,
                    max_encoder_batch, max_decoder_batch, max_points) -> Manifest:
    """A SAM 3 model directory in `staging`: the graphs (the encoder's, or for the torch backend its weights),
    CLIP's vocabulary for the tokenizer, the manifest."""
    from .builder import onnx_manifest, torch_encoder

    if backend != "torch":
        export_encoder(model, staging / "encoder.onnx")
    export_decoder(model, staging / "decoder.onnx")
    export_text(model, staging / "text.onnx", spec.context_length)
    export_detector(model, staging / "detector.onnx", spec.context_length, spec.box_slots)
    shutil.copyfile(vocabulary_path(), staging / VOCABULARY)
    manifest = onnx_manifest(spec, model_type, checkpoint, {"file": "decoder.onnx"})
    manifest.concepts = {"text_file": "text.onnx", "detector_file": "detector.onnx", "vocabulary_file": VOCABULARY,
                         "context_length": spec.context_length, "box_slots": spec.box_slots,
                         "queries": int(model.transformer.decoder.num_queries),
                         "confidence_threshold": spec.confidence_threshold,
                         "architecture": asdict(Sam3Architecture.of(model.state_dict()))}
    if backend == "torch":
        from maskserve.engines import torch_backend, torch_sam3

        architecture = torch_sam3.save_encoder(model, staging / torch_backend.ENCODER_FILE)
        torch_encoder(manifest, precision, max_encoder_batch, architecture)
    manifest.save(staging)
    return manifest
