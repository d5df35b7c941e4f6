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

__all__ = ["pb", "pb_grpc"]

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"  # in the source tree
PROTO = PROTO_ROOT / "maskserve" / "v1" / "maskserve.proto"


def generate(out: Path) -> None:
    """protoc (from grpcio-tools) on the .proto: maskserve/v1/maskserve_pb2{,_grpc}.py and .pyi under `out`."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            str(PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


if __name__ == "__main__":
    generate(Path(__file__).resolve().parent.parent)
