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


def cpu_peak_flops(cores: int | None = None, cpuinfo: str | None = None) -> dict:
    """fp32 peak of this CPU from /proc/cpuinfo: cores × clock × (FMA datapath lanes × 2 × FMA units).

    The datapath, not the instruction set, sets the lanes: AMD's Zen 3 and Zen 4 (family 25) run AVX-512
    on 256-bit units, two micro-ops per instruction, so they peak like AVX2 (Zen 5, family 26, has 512-bit units)."""
    import os

    info = cpuinfo if cpuinfo is not None else open("/proc/cpuinfo").read()
    field = lambda name: next(line for line in info.splitlines() if line.startswith(name)).split(":")[1].strip()  # noqa: E731
    flags = set(field("flags").split())
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    narrow_avx512 = field("vendor_id") == "AuthenticAMD" and int(field("cpu family")) < 26
    lanes = 16 if "avx512f" in flags and not narrow_avx512 else 8 if "avx2" in flags or "avx" in flags else 4
    per_cycle = lanes * 2 * 2 if "fma" in flags else lanes * 2  # two FMA pipes on current x86 cores
    cores = cores or len(os.sched_getaffinity(0))
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    return {"cores": cores, "mhz": mhz, "flops_per_cycle_per_core": per_cycle,
            "peak_flops": cores * mhz * 1e6 * per_cycle, "isa": isa, "datapath_bits": lanes * 32}


def measured_gemm_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 GEMM (NumPy's BLAS, every core): what a tuned kernel reaches on this
    machine. It can exceed `cpu_peak_flops`, whose clock is the nominal one /proc/cpuinfo shows (a
    virtual machine's cores may run faster, boosted)."""
    import time

    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
