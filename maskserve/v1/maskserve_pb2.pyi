from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGBA8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class PointLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POINT_LABEL_BACKGROUND: _ClassVar[PointLabel]
    POINT_LABEL_FOREGROUND: _ClassVar[PointLabel]

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_UNSPECIFIED: _ClassVar[MaskFormat]
    MASK_FORMAT_COCO_RLE: _ClassVar[MaskFormat]
    MASK_FORMAT_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_BITMAP: _ClassVar[MaskFormat]
    MASK_FORMAT_NONE: _ClassVar[MaskFormat]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGBA8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
POINT_LABEL_BACKGROUND: PointLabel
POINT_LABEL_FOREGROUND: PointLabel
MASK_FORMAT_UNSPECIFIED: MaskFormat
MASK_FORMAT_COCO_RLE: MaskFormat
MASK_FORMAT_PNG: MaskFormat
MASK_FORMAT_BITMAP: MaskFormat
MASK_FORMAT_NONE: MaskFormat

class Image(_message.Message):
    __slots__ = ("encoded", "raw", "ignore_exif_orientation")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EXIF_ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    ignore_exif_orientation: bool
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., ignore_exif_orientation: _Optional[bool] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodeImageRequest(_message.Message):
    __slots__ = ("image", "wait")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    image: Image
    wait: bool
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., wait: _Optional[bool] = ...) -> None: ...

class EncodeImageResponse(_message.Message):
    __slots__ = ("image_id", "ready", "width", "height", "model_version")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    ready: bool
    width: int
    height: int
    model_version: str
    def __init__(self, image_id: _Optional[str] = ..., ready: _Optional[bool] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y", "label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    label: PointLabel
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[_Union[PointLabel, str]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class LowResLogits(_message.Message):
    __slots__ = ("side", "data")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    side: int
    data: bytes
    def __init__(self, side: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("points", "box", "mask_input", "mask_from")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_FIELD_NUMBER: _ClassVar[int]
    MASK_FROM_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    box: Box
    mask_input: LowResLogits
    mask_from: MaskFrom
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., mask_input: _Optional[_Union[LowResLogits, _Mapping]] = ..., mask_from: _Optional[_Union[MaskFrom, _Mapping]] = ...) -> None: ...

class MaskFrom(_message.Message):
    __slots__ = ("handle", "output_index")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    handle: bytes
    output_index: int
    def __init__(self, handle: _Optional[bytes] = ..., output_index: _Optional[int] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("single_mask", "best_mask_only", "mask_format", "return_low_res_logits")
    SINGLE_MASK_FIELD_NUMBER: _ClassVar[int]
    BEST_MASK_ONLY_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    single_mask: bool
    best_mask_only: bool
    mask_format: MaskFormat
    return_low_res_logits: bool
    def __init__(self, single_mask: _Optional[bool] = ..., best_mask_only: _Optional[bool] = ..., mask_format: _Optional[_Union[MaskFormat, str]] = ..., return_low_res_logits: _Optional[bool] = ...) -> None: ...

class SegmentPromptRequest(_message.Message):
    __slots__ = ("image_id", "image", "prompts", "options")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: Image
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    options: OutputOptions
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., options: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class CocoRle(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: bytes
    def __init__(self, counts: _Optional[bytes] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("width", "height", "rle", "png", "bitmap", "predicted_iou", "stability_score", "bbox", "area", "low_res_logits", "output_index")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    BITMAP_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_IOU_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_LOGITS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rle: CocoRle
    png: bytes
    bitmap: bytes
    predicted_iou: float
    stability_score: float
    bbox: BoundingBox
    area: int
    low_res_logits: LowResLogits
    output_index: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rle: _Optional[_Union[CocoRle, _Mapping]] = ..., png: _Optional[bytes] = ..., bitmap: _Optional[bytes] = ..., predicted_iou: _Optional[float] = ..., stability_score: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., area: _Optional[int] = ..., low_res_logits: _Optional[_Union[LowResLogits, _Mapping]] = ..., output_index: _Optional[int] = ...) -> None: ...

class PromptResult(_message.Message):
    __slots__ = ("masks", "logits_handle")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_HANDLE_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[Mask]
    logits_handle: bytes
    def __init__(self, masks: _Optional[_Iterable[_Union[Mask, _Mapping]]] = ..., logits_handle: _Optional[bytes] = ...) -> None: ...

class SegmentPromptResponse(_message.Message):
    __slots__ = ("image_id", "results", "model_version")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    results: _containers.RepeatedCompositeFieldContainer[PromptResult]
    model_version: str
    def __init__(self, image_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[PromptResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class StreamSegmentRequest(_message.Message):
    __slots__ = ("sequence", "frame", "image_id", "prompt", "options", "drop_if_stale")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DROP_IF_STALE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    frame: Image
    image_id: str
    prompt: Prompt
    options: OutputOptions
    drop_if_stale: bool
    def __init__(self, sequence: _Optional[int] = ..., frame: _Optional[_Union[Image, _Mapping]] = ..., image_id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., options: _Optional[_Union[OutputOptions, _Mapping]] = ..., drop_if_stale: _Optional[bool] = ...) -> None: ...

class StreamSegmentResponse(_message.Message):
    __slots__ = ("sequence", "result", "image_id", "dropped", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    result: PromptResult
    image_id: str
    dropped: bool
    error: Error
    def __init__(self, sequence: _Optional[int] = ..., result: _Optional[_Union[PromptResult, _Mapping]] = ..., image_id: _Optional[str] = ..., dropped: _Optional[bool] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class TrackRequest(_message.Message):
    __slots__ = ("sequence", "start", "frame", "image_id", "add_object", "correct_object", "remove_object", "reset")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_OBJECT_FIELD_NUMBER: _ClassVar[int]
    CORRECT_OBJECT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_OBJECT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    start: TrackStart
    frame: Image
    image_id: str
    add_object: ObjectPrompt
    correct_object: ObjectPrompt
    remove_object: int
    reset: bool
    def __init__(self, sequence: _Optional[int] = ..., start: _Optional[_Union[TrackStart, _Mapping]] = ..., frame: _Optional[_Union[Image, _Mapping]] = ..., image_id: _Optional[str] = ..., add_object: _Optional[_Union[ObjectPrompt, _Mapping]] = ..., correct_object: _Optional[_Union[ObjectPrompt, _Mapping]] = ..., remove_object: _Optional[int] = ..., reset: _Optional[bool] = ...) -> None: ...

class TrackStart(_message.Message):
    __slots__ = ("session_id", "drop_stale_frames", "mask_format", "expected_frames")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_STALE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    drop_stale_frames: bool
    mask_format: MaskFormat
    expected_frames: int
    def __init__(self, session_id: _Optional[str] = ..., drop_stale_frames: _Optional[bool] = ..., mask_format: _Optional[_Union[MaskFormat, str]] = ..., expected_frames: _Optional[int] = ...) -> None: ...

class ObjectPrompt(_message.Message):
    __slots__ = ("object_id", "points", "box", "mask", "replace_points")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    REPLACE_POINTS_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    points: _containers.RepeatedCompositeFieldContainer[Point]
    box: Box
    mask: Mask
    replace_points: bool
    def __init__(self, object_id: _Optional[int] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., replace_points: _Optional[bool] = ...) -> None: ...

class TrackSession(_message.Message):
    __slots__ = ("session_id", "frame_index", "object_ids", "resumed", "model_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame_index: int
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    resumed: bool
    model_version: str
    def __init__(self, session_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., object_ids: _Optional[_Iterable[int]] = ..., resumed: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class TrackedObject(_message.Message):
    __slots__ = ("object_id", "mask", "object_score", "visible", "predicted_iou")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SCORE_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_IOU_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    mask: Mask
    object_score: float
    visible: bool
    predicted_iou: float
    def __init__(self, object_id: _Optional[int] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., object_score: _Optional[float] = ..., visible: _Optional[bool] = ..., predicted_iou: _Optional[float] = ...) -> None: ...

class TrackedFrame(_message.Message):
    __slots__ = ("frame_index", "image_id", "objects", "dropped_frames", "checkpoint_error")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ERROR_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    image_id: str
    objects: _containers.RepeatedCompositeFieldContainer[TrackedObject]
    dropped_frames: int
    checkpoint_error: Error
    def __init__(self, frame_index: _Optional[int] = ..., image_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[TrackedObject, _Mapping]]] = ..., dropped_frames: _Optional[int] = ..., checkpoint_error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("sequence", "session", "frame", "dropped", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    session: TrackSession
    frame: TrackedFrame
    dropped: bool
    error: Error
    def __init__(self, sequence: _Optional[int] = ..., session: _Optional[_Union[TrackSession, _Mapping]] = ..., frame: _Optional[_Union[TrackedFrame, _Mapping]] = ..., dropped: _Optional[bool] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class GetEmbeddingRequest(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("image_id", "model_version", "width", "height", "arrays")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    model_version: str
    width: int
    height: int
    arrays: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, image_id: _Optional[str] = ..., model_version: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., arrays: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "float16")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FLOAT16_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    float16: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., float16: _Optional[bytes] = ...) -> None: ...

class Exemplar(_message.Message):
    __slots__ = ("box", "negative")
    BOX_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    negative: bool
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., negative: _Optional[bool] = ...) -> None: ...

class SegmentConceptRequest(_message.Message):
    __slots__ = ("image_id", "image", "phrases", "exemplars", "confidence_threshold", "options")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PHRASES_FIELD_NUMBER: _ClassVar[int]
    EXEMPLARS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: Image
    phrases: _containers.RepeatedScalarFieldContainer[str]
    exemplars: _containers.RepeatedCompositeFieldContainer[Exemplar]
    confidence_threshold: float
    options: OutputOptions
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., phrases: _Optional[_Iterable[str]] = ..., exemplars: _Optional[_Iterable[_Union[Exemplar, _Mapping]]] = ..., confidence_threshold: _Optional[float] = ..., options: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class ConceptInstance(_message.Message):
    __slots__ = ("mask", "box", "score")
    MASK_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    mask: Mask
    box: Box
    score: float
    def __init__(self, mask: _Optional[_Union[Mask, _Mapping]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class ConceptResult(_message.Message):
    __slots__ = ("phrase", "instances", "presence")
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    phrase: str
    instances: _containers.RepeatedCompositeFieldContainer[ConceptInstance]
    presence: float
    def __init__(self, phrase: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[ConceptInstance, _Mapping]]] = ..., presence: _Optional[float] = ...) -> None: ...

class SegmentConceptResponse(_message.Message):
    __slots__ = ("image_id", "results", "model_version")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    results: _containers.RepeatedCompositeFieldContainer[ConceptResult]
    model_version: str
    def __init__(self, image_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ConceptResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_type", "model_version", "backend", "image_size", "low_res_side", "max_points", "max_prompts", "family", "capabilities")
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOW_RES_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    model_type: str
    model_version: str
    backend: str
    image_size: int
    low_res_side: int
    max_points: int
    max_prompts: int
    family: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_type: _Optional[str] = ..., model_version: _Optional[str] = ..., backend: _Optional[str] = ..., image_size: _Optional[int] = ..., low_res_side: _Optional[int] = ..., max_points: _Optional[int] = ..., max_prompts: _Optional[int] = ..., family: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class AutomaticOptions(_message.Message):
    __slots__ = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio", "crop_n_points_downscale_factor", "point_grids", "min_mask_region_area", "mask_threshold", "multimask_output", "use_m2m")
    POINTS_PER_SIDE_FIELD_NUMBER: _ClassVar[int]
    POINTS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    PRED_IOU_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BOX_NMS_THRESH_FIELD_NUMBER: _ClassVar[int]
    CROP_N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CROP_NMS_THRESH_FIELD_NUMBER: _ClassVar[int]
    CROP_OVERLAP_RATIO_FIELD_NUMBER: _ClassVar[int]
    CROP_N_POINTS_DOWNSCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    POINT_GRIDS_FIELD_NUMBER: _ClassVar[int]
    MIN_MASK_REGION_AREA_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MULTIMASK_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    USE_M2M_FIELD_NUMBER: _ClassVar[int]
    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    crop_n_layers: int
    crop_nms_thresh: float
    crop_overlap_ratio: float
    crop_n_points_downscale_factor: int
    point_grids: _containers.RepeatedCompositeFieldContainer[PointGrid]
    min_mask_region_area: int
    mask_threshold: float
    multimask_output: bool
    use_m2m: bool
    def __init__(self, points_per_side: _Optional[int] = ..., points_per_batch: _Optional[int] = ..., pred_iou_thresh: _Optional[float] = ..., stability_score_thresh: _Optional[float] = ..., stability_score_offset: _Optional[float] = ..., box_nms_thresh: _Optional[float] = ..., crop_n_layers: _Optional[int] = ..., crop_nms_thresh: _Optional[float] = ..., crop_overlap_ratio: _Optional[float] = ..., crop_n_points_downscale_factor: _Optional[int] = ..., point_grids: _Optional[_Iterable[_Union[PointGrid, _Mapping]]] = ..., min_mask_region_area: _Optional[int] = ..., mask_threshold: _Optional[float] = ..., multimask_output: _Optional[bool] = ..., use_m2m: _Optional[bool] = ...) -> None: ...

class PointGrid(_message.Message):
    __slots__ = ("xy",)
    XY_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, xy: _Optional[_Iterable[float]] = ...) -> None: ...

class SegmentEverythingRequest(_message.Message):
    __slots__ = ("image_id", "image", "options")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: Image
    options: AutomaticOptions
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[AutomaticOptions, _Mapping]] = ...) -> None: ...

class SegmentEverythingResponse(_message.Message):
    __slots__ = ("progress", "masks")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    progress: EverythingProgress
    masks: EverythingMasks
    def __init__(self, progress: _Optional[_Union[EverythingProgress, _Mapping]] = ..., masks: _Optional[_Union[EverythingMasks, _Mapping]] = ...) -> None: ...

class EverythingProgress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EverythingMasks(_message.Message):
    __slots__ = ("image_id", "model_version", "width", "height", "masks", "last", "total_masks", "stage_seconds", "filtered")
    class StageSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FilteredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MASKS_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    model_version: str
    width: int
    height: int
    masks: _containers.RepeatedCompositeFieldContainer[AutomaticMask]
    last: bool
    total_masks: int
    stage_seconds: _containers.ScalarMap[str, float]
    filtered: _containers.ScalarMap[str, int]
    def __init__(self, image_id: _Optional[str] = ..., model_version: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., masks: _Optional[_Iterable[_Union[AutomaticMask, _Mapping]]] = ..., last: _Optional[bool] = ..., total_masks: _Optional[int] = ..., stage_seconds: _Optional[_Mapping[str, float]] = ..., filtered: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AutomaticMask(_message.Message):
    __slots__ = ("segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_x", "point_y", "crop_box")
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_IOU_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    POINT_X_FIELD_NUMBER: _ClassVar[int]
    POINT_Y_FIELD_NUMBER: _ClassVar[int]
    CROP_BOX_FIELD_NUMBER: _ClassVar[int]
    segmentation: CocoRle
    area: int
    bbox: ReferenceBox
    predicted_iou: float
    stability_score: float
    point_x: float
    point_y: float
    crop_box: ReferenceBox
    def __init__(self, segmentation: _Optional[_Union[CocoRle, _Mapping]] = ..., area: _Optional[int] = ..., bbox: _Optional[_Union[ReferenceBox, _Mapping]] = ..., predicted_iou: _Optional[float] = ..., stability_score: _Optional[float] = ..., point_x: _Optional[float] = ..., point_y: _Optional[float] = ..., crop_box: _Optional[_Union[ReferenceBox, _Mapping]] = ...) -> None: ...

class ReferenceBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...
