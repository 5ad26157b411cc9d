from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRequest(_message.Message):
    __slots__ = ("last_round",)
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    last_round: int
    def __init__(self, last_round: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("action", "round", "total_rounds", "round_id", "adapter_sha256", "adapter_bytes", "adapter_round", "training_json", "encoding_json", "retry_after_s", "join_deadline_s")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[Task.Action]
        WAIT: _ClassVar[Task.Action]
        TRAIN: _ClassVar[Task.Action]
        FINISHED: _ClassVar[Task.Action]
        CALIBRATE: _ClassVar[Task.Action]
    ACTION_UNSPECIFIED: Task.Action
    WAIT: Task.Action
    TRAIN: Task.Action
    FINISHED: Task.Action
    CALIBRATE: Task.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JSON_FIELD_NUMBER: _ClassVar[int]
    ENCODING_JSON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    JOIN_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    action: Task.Action
    round: int
    total_rounds: int
    round_id: bytes
    adapter_sha256: str
    adapter_bytes: int
    adapter_round: int
    training_json: str
    encoding_json: str
    retry_after_s: float
    join_deadline_s: float
    def __init__(self, action: _Optional[_Union[Task.Action, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., round_id: _Optional[bytes] = ..., adapter_sha256: _Optional[str] = ..., adapter_bytes: _Optional[int] = ..., adapter_round: _Optional[int] = ..., training_json: _Optional[str] = ..., encoding_json: _Optional[str] = ..., retry_after_s: _Optional[float] = ..., join_deadline_s: _Optional[float] = ...) -> None: ...

class AdapterRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class AdapterChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ParticipantReport(_message.Message):
    __slots__ = ("round", "adapter_round", "epsilon", "delta")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    round: int
    adapter_round: int
    epsilon: float
    delta: float
    def __init__(self, round: _Optional[int] = ..., adapter_round: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
