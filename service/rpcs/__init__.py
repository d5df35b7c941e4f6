"""One module per RPC of `maskserve.v1.Segmenter`, named after it in snake case (`SegmentPrompt` →
`segment_prompt`), each with `handle(service, request, call)`: a coroutine for a unary response, an async
generator for a streamed one (whose request, for a client-streaming method, is the requests' async
iterator). The server finds them from the proto's service descriptor, so an RPC is added by declaring it in
the proto and writing its module here; every concern (`calls`) applies to it without further wiring.
"""

from __future__ import annotations

import importlib
import re


def module_name(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def handler(rpc: str):
    return importlib.import_module(f"{__name__}.{module_name(rpc)}").handle
