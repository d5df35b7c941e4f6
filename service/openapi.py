"""The HTTP API's OpenAPI 3.1 document, generated from the .proto (its `google.api.http` routes, its messages in
protobuf's JSON mapping, its comments as descriptions) by `make proto` beside the generated Python code, and
served at `/openapi.json`. tests/test_proto.py fails when the committed document is stale."""

from __future__ import annotations

import json
from importlib import resources

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

FILE = "openapi.json"  # in maskserve/v1, beside the generated code
PACKAGE = "maskserve.v1"
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: {"type": "number"}, F.TYPE_FLOAT: {"type": "number"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"}, F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "uint32"}, F.TYPE_FIXED32: {"type": "integer", "format": "uint32"},
    # 64-bit integers are strings in protobuf's JSON mapping (numbers are accepted too)
    F.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    F.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    F.TYPE_BOOL: {"type": "boolean"}, F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
STATUS = {"$ref": "#/components/schemas/google.rpc.Status"}


def text() -> str:
    """The committed document."""
    return (resources.files("maskserve.v1") / FILE).read_text()


def _comments(proto: descriptor_pb2.FileDescriptorProto) -> dict[tuple, str]:
    """Each element's comment (the one above it, else the one after it on its line), by descriptor path."""
    return {tuple(loc.path): " ".join((loc.leading_comments or loc.trailing_comments).split())
            for loc in proto.source_code_info.location if loc.leading_comments or loc.trailing_comments}


def document(files: descriptor_pb2.FileDescriptorSet) -> dict:
    """The OpenAPI document for the maskserve.v1 file in `files` (a descriptor set with source info)."""
    proto = next(f for f in files.file if f.name == "maskserve/v1/maskserve.proto")
    doc_of = _comments(proto)
    schemas: dict[str, dict] = {}
    maps = {}

    def ref(type_name: str) -> dict:
        return {"$ref": f"#/components/schemas/{type_name.lstrip('.').removeprefix(PACKAGE + '.')}"}

    def field_schema(field: F) -> dict:
        if field.type == F.TYPE_MESSAGE:
            if field.type_name in maps:
                return {"type": "object", "additionalProperties": field_schema(maps[field.type_name])}
            return ref(field.type_name)
        if field.type == F.TYPE_ENUM:
            return ref(field.type_name)
        return dict(SCALARS[field.type])

    for message in proto.message_type:
        for nested in message.nested_type:
            if nested.options.map_entry:
                maps[f".{PACKAGE}.{message.name}.{nested.name}"] = nested.field[1]
    for i, enum in enumerate(proto.enum_type):
        schemas[enum.name] = {"type": "string", "enum": [v.name for v in enum.value],
                              "description": doc_of.get((5, i), "")}
    for i, message in enumerate(proto.message_type):
        properties = {}
        for j, field in enumerate(message.field):
            schema = field_schema(field)
            if field.label == F.LABEL_REPEATED and field.type_name not in maps:
                schema = {"type": "array", "items": schema}
            description = doc_of.get((4, i, 2, j), "")
            if field.HasField("oneof_index") and not field.proto3_optional:
                group = message.oneof_decl[field.oneof_index].name
                description = f"(one of `{group}`) {description}".strip()
            if description:
                schema = {**schema, "description": description} if "$ref" not in schema else \
                    {"allOf": [schema], "description": description}
            properties[field.json_name] = schema
        schemas[message.name] = {"type": "object", "properties": properties, "additionalProperties": False,
                                 "description": doc_of.get((4, i), "")}
    schemas["google.rpc.Status"] = {
        "type": "object", "description": "An error: its gRPC code, message and details (google.rpc.ErrorInfo with "
                                         "a stable reason, BadRequest, RetryInfo, ResourceInfo).",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "details": {"type": "array", "items": {"type": "object", "properties": {
                           "@type": {"type": "string"}}, "additionalProperties": True}}}}

    paths: dict[str, dict] = {}
    (service,) = proto.service
    for i, method in enumerate(service.method):
        rule = method.options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is None:
            continue
        path = getattr(rule, verb)
        request, response = ref(method.input_type), ref(method.output_type)
        operation = {"operationId": method.name, "summary": doc_of.get((6, 0, 2, i), ""),
                     "responses": {"default": {"description": "An error (google.rpc.Status; HTTP status by "
                                                              "Google's mapping of its code)",
                                               "content": {"application/json": {"schema": STATUS}}}}}
        variables = [part[1:-1] for part in path.replace(":", "/").split("/") if part.startswith("{")]
        parameters = [{"name": v, "in": "path", "required": True, "schema": {"type": "string"}} for v in variables]
        if method.client_streaming:
            operation["description"] = (
                "A WebSocket (GET with Upgrade): each frame one request message (JSON text, or protobuf binary), "
                "answered by response messages in the same encoding; a failure of the call ends it with a last "
                "text frame `{\"error\": Status}` and close code 4000 + its code. Browsers send the API key as the "
                "subprotocol `bearer.<key>` beside `maskserve.v1`.")
            operation["x-websocket"] = {"request": request, "response": response}
            operation["responses"]["101"] = {"description": "Switching to the WebSocket"}
        else:
            if rule.body == "*":
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": request},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "request": {"type": "string", "description": "the request in JSON (optional)"},
                        "image": {"type": "string", "format": "binary",
                                  "description": "the image file (JPEG, PNG, WebP) instead of base64"}}}}}}
            if method.server_streaming:
                operation["responses"]["200"] = {
                    "description": "The responses as they come: one JSON message a line (NDJSON), or server-sent "
                                   "events with `Accept: text/event-stream`; a failure after the first is a last "
                                   "`{\"error\": Status}` line (an `error` event)",
                    "content": {"application/x-ndjson": {"schema": response},
                                "text/event-stream": {"schema": response}}}
            else:
                operation["responses"]["200"] = {"description": "OK",
                                                 "content": {"application/json": {"schema": response}}}
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})["get" if method.client_streaming else verb] = operation
    paths["/v1/model/decoder.onnx"] = {"get": {
        "operationId": "GetDecoderModel", "summary": "The model's prompt decoder (ONNX), to run in the client on "
                                                     "GetEmbedding's arrays (to callers allowed GetModelInfo).",
        "responses": {"200": {"description": "The ONNX graph", "content": {"application/octet-stream": {}}},
                      "default": {"description": "An error", "content": {"application/json": {"schema": STATUS}}}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "maskserve", "version": "v1",
                     "description": "\n".join(line.strip() for line in _header(proto)).strip()},
            "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                                          "description": "An API key from the access file"}}},
            "security": [{}, {"apiKey": []}]}


def _header(proto) -> list[str]:
    for loc in proto.source_code_info.location:
        if list(loc.path) == [12]:  # the comment above `syntax`
            return (loc.leading_comments or "".join(loc.leading_detached_comments[:1])).splitlines()
    return []


def generate(descriptor_set: bytes) -> str:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    return json.dumps(document(files), indent=1, ensure_ascii=False) + "\n"
