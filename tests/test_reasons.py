"""The ErrorInfo reasons are declared once (`service/errors.Reason`, each with its status and meaning): the
table in docs/api.md is made from it, and every reason the service gives is one of its members."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import grpc
import pytest

from maskserve.service import access, errors, failures, quotas
from maskserve.service.errors import Reason

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
REASON_LIKE = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+")  # QUEUE_FULL, QUOTA_RATE, ...


def sources():
    for path in sorted(SERVICE.rglob("*.py")):
        if path.name != "errors.py":  # the declaration itself
            yield path, ast.parse(path.read_text(), str(path))


def called(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def test_the_docs_table_is_the_reasons():
    assert errors.reasons_table() in (ROOT / "docs" / "api.md").read_text(), \
        "docs/api.md's table of error reasons is stale: paste errors.reasons_table()"


def test_each_reason_is_its_name_on_the_wire_with_a_status_and_a_meaning():
    for r in Reason:
        assert r.value == r.name and str(r) == r.name and f"{r}" == r.name and r == r.name
        assert isinstance(r.status, grpc.StatusCode) and r.status != grpc.StatusCode.OK
        assert r.meaning and "\n" not in r.meaning and "|" not in r.meaning, r
    # programs switch on these: a reason may be added, never renamed or dropped
    assert {"INVALID_PROMPT", "INVALID_IMAGE", "INVALID_IMAGE_ID", "INVALID_PARAMETER", "MALFORMED_REQUEST",
            "IMAGE_NOT_FOUND", "HANDLE_EXPIRED", "QUEUE_FULL", "QUEUE_OUT_OF_MEMORY", "QUOTA_RATE", "QUOTA_STREAMS",
            "QUOTA_QUEUED_JOBS", "QUOTA_EMBEDDING_BYTES", "STORE_UNAVAILABLE", "EMBEDDING_EVICTED",
            "NOT_ENCODED_IN_TIME", "ENCODE_FAILED", "UNAUTHENTICATED", "RPC_NOT_ALLOWED", "NO_IMAGE_YET",
            "INTERNAL"} <= set(Reason.__members__)


def test_every_reason_the_service_gives_is_a_member():
    used, quota_kinds = set(), set()
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason":
                if node.attr != "quota":
                    assert node.attr in Reason.__members__, f"{path.name}:{node.lineno}: Reason.{node.attr}"
                    used.add(node.attr)
            if isinstance(node, ast.Call) and called(node) in ("ServiceError", "error_info"):
                first = node.args[0]
                assert not isinstance(first, (ast.Constant, ast.JoinedStr)), \
                    f"{path.name}:{node.lineno}: a reason given as a string; give an errors.Reason"
            if isinstance(node, ast.Call) and called(node) == "QuotaExceeded":
                assert isinstance(node.args[0], ast.Constant), f"{path.name}:{node.lineno}"
                quota_kinds.add(node.args[0].value)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and REASON_LIKE.fullmatch(node.value):
                assert node.value not in Reason.__members__, \
                    f"{path.name}:{node.lineno}: {node.value!r} written out; use Reason.{node.value}"
    assert quota_kinds == {"rate", "streams", "queued_jobs", "embedding_bytes", "tracking_sessions", "tracked_objects"}
    used |= {Reason.quota(kind).name for kind in quota_kinds}
    assert used == set(Reason.__members__), f"declared but never given: {set(Reason.__members__) - used}"


@pytest.mark.parametrize("exc, reason, metadata", [
    (failures.ServiceError(Reason.NO_IMAGE_YET, "send a frame"), "NO_IMAGE_YET", {}),
    (failures.unknown_image("0" * 32), "IMAGE_NOT_FOUND", {}),
    (quotas.QuotaExceeded("queued_jobs", 1.0, "too many"), "QUOTA_QUEUED_JOBS", {"tenant": "acme"}),
    (access.AccessError(True, "not this RPC"), "RPC_NOT_ALLOWED", {}),
    (access.AccessError(False, "no key"), "UNAUTHENTICATED", {}),
    (ConnectionError("down"), "STORE_UNAVAILABLE", {}),
    (asyncio.TimeoutError(), "NOT_ENCODED_IN_TIME", {}),
])
def test_a_failure_gets_its_reasons_status(exc, reason, metadata):
    code, _, details = failures.explain(exc, "acme")
    info = details[0]
    assert type(info.reason) is str and info.reason == reason and info.domain == errors.DOMAIN
    assert dict(info.metadata) == metadata and code == Reason[reason].status
    errors.status(code, "message", details)  # packs
