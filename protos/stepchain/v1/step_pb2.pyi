from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_RAW: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
IMAGE_ENCODING_RAW: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding

class Image(_message.Message):
    __slots__ = ("width", "height", "channels", "data", "encoding", "shm")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    channels: int
    data: bytes
    encoding: ImageEncoding
    shm: SharedFrame
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., shm: _Optional[_Union[SharedFrame, _Mapping]] = ...) -> None: ...

class SharedFrame(_message.Message):
    __slots__ = ("name", "size", "token", "domain")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    token: bytes
    domain: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., token: _Optional[bytes] = ..., domain: _Optional[str] = ...) -> None: ...

class Overrides(_message.Message):
    __slots__ = ("threads", "passes", "schedule")
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    threads: int
    passes: int
    schedule: str
    def __init__(self, threads: _Optional[int] = ..., passes: _Optional[int] = ..., schedule: _Optional[str] = ...) -> None: ...

class ProcessRequest(_message.Message):
    __slots__ = ("request_id", "image", "output_encoding", "jpeg_quality", "overrides", "route", "labels", "reply")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: Image
    output_encoding: ImageEncoding
    jpeg_quality: int
    overrides: Overrides
    route: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.ScalarMap[str, str]
    reply: SharedFrame
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., output_encoding: _Optional[_Union[ImageEncoding, str]] = ..., jpeg_quality: _Optional[int] = ..., overrides: _Optional[_Union[Overrides, _Mapping]] = ..., route: _Optional[_Iterable[int]] = ..., labels: _Optional[_Mapping[str, str]] = ..., reply: _Optional[_Union[SharedFrame, _Mapping]] = ...) -> None: ...

class StepTiming(_message.Message):
    __slots__ = ("pipeline_id", "step_id", "step_type", "host", "threads", "queue_wait_ms", "decode_ms", "kernel_ms", "forward_ms", "encode_ms", "total_ms", "next_step", "forward_attempts")
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_MS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    pipeline_id: str
    step_id: int
    step_type: str
    host: str
    threads: int
    queue_wait_ms: float
    decode_ms: float
    kernel_ms: float
    forward_ms: float
    encode_ms: float
    total_ms: float
    next_step: int
    forward_attempts: int
    def __init__(self, pipeline_id: _Optional[str] = ..., step_id: _Optional[int] = ..., step_type: _Optional[str] = ..., host: _Optional[str] = ..., threads: _Optional[int] = ..., queue_wait_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., kernel_ms: _Optional[float] = ..., forward_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., next_step: _Optional[int] = ..., forward_attempts: _Optional[int] = ...) -> None: ...

class ProcessResponse(_message.Message):
    __slots__ = ("request_id", "image", "labels", "measures", "timings", "trace_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MeasuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MEASURES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: Image
    labels: _containers.ScalarMap[str, str]
    measures: _containers.ScalarMap[str, float]
    timings: _containers.RepeatedCompositeFieldContainer[StepTiming]
    trace_id: str
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., measures: _Optional[_Mapping[str, float]] = ..., timings: _Optional[_Iterable[_Union[StepTiming, _Mapping]]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("pipeline_id", "step_id", "config_json", "max_pixels", "max_message_bytes")
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    pipeline_id: str
    step_id: int
    config_json: str
    max_pixels: int
    max_message_bytes: int
    def __init__(self, pipeline_id: _Optional[str] = ..., step_id: _Optional[int] = ..., config_json: _Optional[str] = ..., max_pixels: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...
