"""The committed generated code (maskserve/v1) is what the .proto generates: an edit to the contract without
`make proto` fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.service import proto

GENERATED = ("maskserve_pb2.py", "maskserve_pb2.pyi", "maskserve_pb2_grpc.py", "internal_pb2.py", "internal_pb2.pyi",
             "openapi.json")


def test_committed_code_is_generated_from_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    proto.generate(tmp_path)
    committed = Path(proto.__file__).resolve().parent.parent / "maskserve" / "v1"
    for name in GENERATED:
        assert (tmp_path / "maskserve" / "v1" / name).read_text() == (committed / name).read_text(), \
            f"maskserve/v1/{name} is stale: run `make proto`"
