"""The generated gRPC modules for proto/maskserve/v1/maskserve.proto, as `maskserve.v1`.

The generated code is committed (maskserve/v1/), not made at import or install time: an installed package
is never written to (read-only images work), grpcio-tools is needed only to change the contract, and every
install — wheel, editable, Docker image — has the same code. `make proto` regenerates it after an edit to
the .proto; tests/test_proto.py fails when the committed code is not what the .proto generates.
"""

from __future__ import annotations

from pathlib import Path

from maskserve.v1 import maskserve_pb2 as pb
from maskserve.v1 import maskserve_pb2_grpc as pb_grpc

from . import openapi

__all__ = ["pb", "pb_grpc"]

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"  # in the source tree
PROTO = PROTO_ROOT / "maskserve" / "v1" / "maskserve.proto"
INTERNAL = PROTO_ROOT / "maskserve" / "v1" / "internal.proto"  # the service's own messages (logits handles)


def generate(out: Path) -> None:
    """protoc (from grpcio-tools) on the .protos: maskserve/v1/maskserve_pb2{,_grpc}.py, internal_pb2.py and
    their .pyi, and the HTTP API's openapi.json, under `out`. The imports (google/api, google/rpc) are in
    proto/; their Python modules come from googleapis-common-protos."""
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    descriptors = out / "maskserve" / "v1" / "descriptors.pb"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", f"--descriptor_set_out={descriptors}",
            "--include_source_info", str(PROTO), str(INTERNAL)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    (descriptors.parent / openapi.FILE).write_text(openapi.generate(descriptors.read_bytes()))
    descriptors.unlink()
    (descriptors.parent / "internal_pb2_grpc.py").unlink()  # it declares no service


if __name__ == "__main__":
    generate(Path(__file__).resolve().parent.parent)
