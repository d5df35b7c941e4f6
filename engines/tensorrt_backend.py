"""TensorRT runners (NVIDIA GPU): the same interface as the ONNX Runtime ones, on `execute_async_v3`.

Device memory and copies go through the CUDA runtime of `cuda-python`; no torch. An engine is refused
unless the GPU's compute capability and the TensorRT version are the ones it was built with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import families
from .interface import DECODER_OUTPUTS, ENCODER_INPUTS
from .model_dir import Manifest, ModelDirError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def cuda_device_properties(device: int = 0) -> dict:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"compute_capability": f"{props.major}.{props.minor}", "name": name.rstrip("\x00")}


def engine_key() -> str:
    """What a TensorRT engine is specific to: this GPU's architecture and the TensorRT version."""
    import tensorrt as trt

    cc = cuda_device_properties()["compute_capability"].replace(".", "")
    return f"sm{cc}-trt{trt.__version__}"


class _Engine:
    def __init__(self, model_dir: Path, manifest: Manifest, part: dict) -> None:
        import tensorrt as trt

        built = manifest.extra.get("gpu", {}).get("compute_capability")
        here = cuda_device_properties()["compute_capability"]
        if built != here or manifest.backend_version != trt.__version__:
            raise ModelDirError(
                f"{model_dir}: engine built for compute capability {built} with TensorRT {manifest.backend_version}, "
                f"but this machine has {here} with TensorRT {trt.__version__}; rebuild it here with "
                f"`maskserve build --backend tensorrt`")
        self.trt = trt
        self.cudart = _cudart()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine((Path(model_dir) / part["file"]).read_bytes())
        if self.engine is None:
            raise ModelDirError(f"{model_dir}: {part['file']} is not a loadable TensorRT engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if nbytes > cap:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr, cap = _check(self.cudart.cudaMalloc(nbytes)), nbytes
            self.buffers[name] = (ptr, cap)
        return ptr

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in inputs.items():
            array = np.ascontiguousarray(array, np.float32)
            inputs[name] = array  # keep alive until the copy has run
            self.context.set_input_shape(name, array.shape)
            ptr = self._device(name, array.nbytes)
            _check(self.cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream))
            self.context.set_tensor_address(name, ptr)
        results = []
        for name in outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, np.float32)
            self.context.set_tensor_address(name, self._device(name, host.nbytes))
            results.append(host)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, host in zip(outputs, results):
            _check(self.cudart.cudaMemcpyAsync(host.ctypes.data, self.buffers[name][0], host.nbytes, d2h, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return results

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            self.cudart.cudaFree(ptr)


class TensorRTEncoder:
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.engine = _Engine(model_dir, manifest, manifest.encoder)
        self.max_batch = int(manifest.encoder.get("max_batch", 1))
        self.run_size = self.max_batch  # images per run: the worker stores each run's as soon as it is done
        self.outputs = list(families.of(manifest).arrays)  # the embedding's arrays, layout order

    def encode(self, images: np.ndarray) -> np.ndarray:
        if len(self.outputs) > 1:
            raise TypeError(f"this model's embedding is {len(self.outputs)} arrays ({', '.join(self.outputs)}): "
                            f"use encode_arrays")
        chunks = [self.engine.run({ENCODER_INPUTS[0]: images[i:i + self.max_batch]}, self.outputs)[0]
                  for i in range(0, len(images), self.max_batch)]
        return np.concatenate(chunks)

    def encode_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        runs = [self.engine.run({ENCODER_INPUTS[0]: images[i:i + self.max_batch]}, self.outputs)
                for i in range(0, len(images), self.max_batch)]
        return {name: np.concatenate([run[k] for run in runs]) for k, name in enumerate(self.outputs)}


class TensorRTDecoder:
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.engine = _Engine(model_dir, manifest, manifest.decoder)
        self.max_batch = int(manifest.decoder.get("max_batch", 1))
        self.prompt_batch = self.max_batch  # a GPU wants the largest batch its profile allows
        self.inputs = families.of(manifest).decoder_inputs
        self.arrays = list(families.of(manifest).decoder_arrays)  # the embedding's it reads, then the prompts'

    def prepare(self, embedding) -> None:
        return None  # the split decoder is a CPU optimisation; on a GPU the general graph is fast enough

    def decode(self, embedding, coords, labels, mask_input, has_mask_input, prepared=None, extent=None):
        """All four masks over the whole grid (`extent` is a hint the general graph does not take)."""
        image = {name: embedding[name] for name in self.arrays}
        ious, masks = [], []
        for i in range(0, len(coords), self.max_batch):
            s = slice(i, i + self.max_batch)
            iou, low = self.engine.run({**image, **dict(zip(self.inputs[len(self.arrays):], (
                coords[s], labels[s], mask_input[s], has_mask_input[s])))}, DECODER_OUTPUTS)
            ious.append(iou)
            masks.append(low)
        return np.concatenate(ious), np.concatenate(masks)
