"""The engine contract: both backends provide the interfaces' methods with the same parameters, and the
shipped model directory's graphs have exactly the tensor names declared in engines/interface.py."""

from __future__ import annotations

import inspect

import onnxruntime as ort
import pytest

from maskserve.engines import families, interface, load
from maskserve.engines.onnxruntime_backend import OnnxDecoder, OnnxEncoder
from maskserve.engines.tensorrt_backend import TensorRTDecoder, TensorRTEncoder


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


@pytest.mark.parametrize("protocol,classes", [(interface.Encoder, (OnnxEncoder, TensorRTEncoder)),
                                              (interface.Decoder, (OnnxDecoder, TensorRTDecoder))])
def test_backends_provide_the_interface(protocol, classes):
    methods = [n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert methods
    for cls in classes:
        for name in methods:
            assert _parameters(getattr(cls, name)) == _parameters(getattr(protocol, name)), (cls.__name__, name)
    model = load()  # the attributes are set per instance: check them on the ONNX Runtime backend
    for attribute in protocol.__annotations__:
        assert isinstance(getattr(model.encoder if protocol is interface.Encoder else model.decoder, attribute), int)


def test_the_shipped_graphs_have_the_declared_tensor_names(tiny_model_dir):
    def names(file):
        session = ort.InferenceSession(str(tiny_model_dir / file), providers=["CPUExecutionProvider"])
        return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

    assert names("encoder.onnx") == (interface.ENCODER_INPUTS, list(families.get("sam").arrays))
    assert names("decoder.onnx") == (families.get("sam").decoder_inputs, interface.DECODER_OUTPUTS)
    assert names("decoder_image.onnx") == (families.get("sam").decoder_inputs[:1], interface.IMAGE_FEATURES)
    assert names("decoder_points.onnx") == (interface.POINTS_INPUTS, interface.DECODER_OUTPUTS)
