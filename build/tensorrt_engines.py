"""Compile the exported ONNX graphs into TensorRT engines (needs an NVIDIA GPU and the `tensorrt` package).

Engines are specific to the GPU architecture and the TensorRT version; both go into the manifest and the
runner refuses an engine that does not match the machine it is loaded on.
FP16 builds keep the numerically fragile layers (normalisations, softmax, reductions, powers) in FP32:
ViT-H in pure FP16 is known to produce garbage embeddings.
"""

from __future__ import annotations

from pathlib import Path

from .specs import ModelSpec

FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_UNARY_OPS = ("EXP", "LOG", "SQRT", "RECIP")


def gpu_tag() -> dict:
    """Compute capability and name of GPU 0, through the CUDA runtime."""
    from maskserve.engines.tensorrt_backend import cuda_device_properties

    return cuda_device_properties()


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


def build_engines(directory: Path, spec: ModelSpec, precision: str, max_encoder_batch: int,
                  max_decoder_batch: int, max_points: int):
    """Build encoder.plan and decoder.plan next to the ONNX files; returns manifest fields."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError("the tensorrt backend needs the `tensorrt` package and an NVIDIA GPU "
                           "(pip install 'maskserve[tensorrt]')") from exc
    tag = gpu_tag()
    s, (c, e, _), m = spec.image_size, spec.embedding_shape, spec.mask_input_size
    # A box is two points and every prompt without one carries one padding point.
    p = max_points + 2
    enc_opt = max(1, max_encoder_batch // 2)
    encoder = _build(trt, directory / "encoder.onnx", directory / "encoder.plan", precision, {
        "images": ((1, 3, s, s), (enc_opt, 3, s, s), (max_encoder_batch, 3, s, s)),
    })
    b = max_decoder_batch
    decoder = _build(trt, directory / "decoder.onnx", directory / "decoder.plan", precision, {
        "image_embeddings": ((1, c, e, e),) * 3,
        "point_coords": ((1, 1, 2), (1, 2, 2), (b, p, 2)),
        "point_labels": ((1, 1), (1, 2), (b, p)),
        "mask_input": ((1, 1, m, m), (1, 1, m, m), (b, 1, m, m)),
        "has_mask_input": ((1,), (1,), (b,)),
    })
    encoder["max_batch"], decoder["max_batch"], decoder["max_points"] = max_encoder_batch, b, p
    return trt.__version__, encoder, decoder, {"gpu": tag, "tensorrt": trt.__version__}
