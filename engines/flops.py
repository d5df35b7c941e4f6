"""Count the floating-point operations of an ONNX graph by running it once with every tensor exposed.

Counts multiply-adds as two operations for MatMul, Gemm, Conv and ConvTranspose (everything else is
small beside them in SAM's decoder), so a runtime's achieved FLOP/s can be compared with the CPU's peak.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def count_flops(model_path: str, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in existing and name in types:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feeds)))
    values.update(feeds)
    values.update({t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer})
    shape = lambda n: values[n].shape if n in values else None  # noqa: E731
    totals: dict[str, float] = {}
    for node in model.graph.node:
        out = shape(node.output[0])
        if out is None:
            continue
        if node.op_type == "MatMul":
            flops = 2 * np.prod(out) * shape(node.input[0])[-1]
        elif node.op_type == "Gemm":
            a = shape(node.input[0])
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            flops = 2 * np.prod(out) * (a[0] if trans_a else a[-1])
        elif node.op_type == "Conv":
            w = shape(node.input[1])
            flops = 2 * np.prod(out) * np.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            x, w = shape(node.input[0]), shape(node.input[1])
            flops = 2 * np.prod(x) * np.prod(w[1:])
        else:
            continue
        totals[node.op_type] = totals.get(node.op_type, 0.0) + float(flops)
    totals["total"] = sum(totals.values())
    return totals


def cpu_peak_flops(cores: int | None = None) -> dict:
    """fp32 peak of this CPU from /proc/cpuinfo: cores × clock × (FMA vector lanes × 2 × FMA units)."""
    import os

    info = open("/proc/cpuinfo").read()
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":")[1].split())
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    fma = 2 if "fma" in flags or "avx512f" in flags else 1  # two FMA pipes on current x86 cores
    per_cycle = lanes * 2 * fma if "fma" in flags else lanes * 2
    cores = cores or len(os.sched_getaffinity(0))
    return {"cores": cores, "mhz": mhz, "flops_per_cycle_per_core": per_cycle,
            "peak_flops": cores * mhz * 1e6 * per_cycle, "isa": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse"}
