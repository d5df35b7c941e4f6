from maskserve.v1 import maskserve_pb2 as _maskserve_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogitsRecipe(_message.Message):
    __slots__ = ("image_id", "prompt", "single_mask")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SINGLE_MASK_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    prompt: _maskserve_pb2.Prompt
    single_mask: bool
    def __init__(self, image_id: _Optional[str] = ..., prompt: _Optional[_Union[_maskserve_pb2.Prompt, _Mapping]] = ..., single_mask: _Optional[bool] = ...) -> None: ...
