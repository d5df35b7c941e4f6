"""Compile the exported ONNX graphs into TensorRT engines (needs an NVIDIA GPU and the `tensorrt` package).

Engines are specific to the GPU architecture and the TensorRT version; both go into the manifest and the
runner refuses an engine that does not match the machine it is loaded on.
FP16 builds keep the numerically fragile layers (normalisations, softmax, reductions, powers) in FP32:
ViT-H in pure FP16 is known to produce garbage embeddings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from maskserve.engines import families
from maskserve.engines.interface import ENCODER_INPUTS
from maskserve.engines.model_dir import Manifest, staged

FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_UNARY_OPS = ("EXP", "LOG", "SQRT", "RECIP")


def _parse(trt, builder, onnx_path: Path):
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING))
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return network


def _keep_fp32(trt, network) -> int:
    kept = 0
    fp32_types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
    fp32_unary = {getattr(trt.UnaryOperation, op) for op in FP32_UNARY_OPS}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        fragile = layer.type in fp32_types
        if layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            fragile = layer.op in fp32_unary
        elif layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            fragile = layer.op == trt.ElementWiseOperation.POW
        if fragile:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            kept += 1
    return kept


def _build(trt, onnx_path: Path, plan_path: Path, precision: str, profiles: dict[str, tuple]) -> dict:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    kept = 0
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        kept = _keep_fp32(trt, network)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    return {"file": plan_path.name, "onnx": onnx_path.name, "fp32_layers": kept,
            "profile": {k: [list(s) for s in v] for k, v in profiles.items()}}


def profiles(manifest: Manifest, max_encoder_batch: int, max_decoder_batch: int,
             max_points: int) -> tuple[dict[str, tuple], dict[str, tuple], int]:
    """The optimisation profiles of the encoder and general decoder graphs, {input: (min, opt, max) shape}
    for every input of each, and the most sparse points per prompt the decoder's takes."""
    s, m, b = manifest.image_size, manifest.mask_input_size, max_decoder_batch
    # A box is two points; SAM pads a prompt without one with one point, SAM 2.1 pads every prompt so.
    p = max_points + families.of(manifest).extra_prompt_points
    encoder = dict(zip(ENCODER_INPUTS, [((1, 3, s, s), (max(1, max_encoder_batch // 2), 3, s, s),
                                         (max_encoder_batch, 3, s, s))]))
    image = [((1, *a["shape"]),) * 3 for a in manifest.embedding_layout]  # one image's arrays: fixed shapes
    decoder = dict(zip(families.of(manifest).decoder_inputs, [
        *image,  # min, opt, max shapes of each input, in the graph's order
        ((1, 1, 2), (1, 2, 2), (b, p, 2)), ((1, 1), (1, 2), (b, p)),
        ((1, 1, m, m), (1, 1, m, m), (b, 1, m, m)), ((1,), (1,), (b,))]))
    return encoder, decoder, p


def compile_in_place(directory: Path, manifest: Manifest, precision: str, max_encoder_batch: int = 8,
                     max_decoder_batch: int = 64, max_points: int = 64) -> Manifest:
    """Build encoder.plan and decoder.plan next to the ONNX files of a model directory and rewrite its
    manifest for the TensorRT backend. The model version stays: embeddings are the same model's."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError("the tensorrt backend needs the `tensorrt` package and an NVIDIA GPU "
                           "(pip install 'maskserve[tensorrt]')") from exc
    from maskserve.engines.tensorrt_backend import cuda_device_properties

    gpu = cuda_device_properties()
    encoder_profile, decoder_profile, p = profiles(manifest, max_encoder_batch, max_decoder_batch, max_points)
    encoder = _build(trt, directory / "encoder.onnx", directory / "encoder.plan", precision, encoder_profile)
    decoder = _build(trt, directory / "decoder.onnx", directory / "decoder.plan", precision, decoder_profile)
    encoder["max_batch"], decoder["max_batch"], decoder["max_points"] = max_encoder_batch, max_decoder_batch, p
    manifest.backend, manifest.backend_version, manifest.precision = "tensorrt", trt.__version__, precision
    manifest.encoder, manifest.decoder, manifest.extra = encoder, decoder, {"gpu": gpu}
    manifest.save(directory)
    return manifest


def compile_model_dir(source: Path, out: Path, precision: str = "fp16", **limits) -> Manifest:
    """An ONNX Runtime model directory → a TensorRT one for this GPU (no torch needed: runs in the cluster)."""
    source = Path(source)
    manifest = Manifest.load(source)
    if manifest.backend != "onnxruntime":
        raise ValueError(f"{source} is a {manifest.backend} model directory; compile from the exported ONNX one")
    with staged(out) as staging:
        shutil.copytree(source, staging)
        return compile_in_place(staging, manifest, precision, **limits)
