from mlx_sidecar.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_UNHEALTHY: _ClassVar[WorkerState]
    WORKER_STATE_RESTARTING: _ClassVar[WorkerState]
    WORKER_STATE_STOPPING: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]
    WORKER_STATE_GAVE_UP: _ClassVar[WorkerState]

class StandbyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STANDBY_STATE_UNSPECIFIED: _ClassVar[StandbyState]
    STANDBY_STATE_OFF: _ClassVar[StandbyState]
    STANDBY_STATE_STARTING: _ClassVar[StandbyState]
    STANDBY_STATE_READY: _ClassVar[StandbyState]
    STANDBY_STATE_NONE: _ClassVar[StandbyState]
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_UNHEALTHY: WorkerState
WORKER_STATE_RESTARTING: WorkerState
WORKER_STATE_STOPPING: WorkerState
WORKER_STATE_STOPPED: WorkerState
WORKER_STATE_GAVE_UP: WorkerState
STANDBY_STATE_UNSPECIFIED: StandbyState
STANDBY_STATE_OFF: StandbyState
STANDBY_STATE_STARTING: StandbyState
STANDBY_STATE_READY: StandbyState
STANDBY_STATE_NONE: StandbyState

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Listener(_message.Message):
    __slots__ = ("kind", "address", "requires_api_key", "activated")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_API_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    address: str
    requires_api_key: bool
    activated: bool
    def __init__(self, kind: _Optional[str] = ..., address: _Optional[str] = ..., requires_api_key: _Optional[bool] = ..., activated: _Optional[bool] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("daemon_version", "daemon_pid", "daemon_uptime_seconds", "worker_state", "model_id", "model_path", "device", "backend", "device_name", "worker_pid", "worker_uptime_seconds", "worker_restarts", "requests_running", "requests_waiting", "standby", "standby_pid", "listeners", "draining", "replicas", "configured_model", "shard")
    DAEMON_VERSION_FIELD_NUMBER: _ClassVar[int]
    DAEMON_PID_FIELD_NUMBER: _ClassVar[int]
    DAEMON_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORKER_STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    WORKER_UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    STANDBY_PID_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_MODEL_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    daemon_version: str
    daemon_pid: int
    daemon_uptime_seconds: float
    worker_state: WorkerState
    model_id: str
    model_path: str
    device: _inference_pb2.DeviceKind
    backend: _inference_pb2.Backend
    device_name: str
    worker_pid: int
    worker_uptime_seconds: float
    worker_restarts: int
    requests_running: int
    requests_waiting: int
    standby: StandbyState
    standby_pid: int
    listeners: _containers.RepeatedCompositeFieldContainer[Listener]
    draining: bool
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    configured_model: str
    shard: _inference_pb2.ShardInfo
    def __init__(self, daemon_version: _Optional[str] = ..., daemon_pid: _Optional[int] = ..., daemon_uptime_seconds: _Optional[float] = ..., worker_state: _Optional[_Union[WorkerState, str]] = ..., model_id: _Optional[str] = ..., model_path: _Optional[str] = ..., device: _Optional[_Union[_inference_pb2.DeviceKind, str]] = ..., backend: _Optional[_Union[_inference_pb2.Backend, str]] = ..., device_name: _Optional[str] = ..., worker_pid: _Optional[int] = ..., worker_uptime_seconds: _Optional[float] = ..., worker_restarts: _Optional[int] = ..., requests_running: _Optional[int] = ..., requests_waiting: _Optional[int] = ..., standby: _Optional[_Union[StandbyState, str]] = ..., standby_pid: _Optional[int] = ..., listeners: _Optional[_Iterable[_Union[Listener, _Mapping]]] = ..., draining: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., configured_model: _Optional[str] = ..., shard: _Optional[_Union[_inference_pb2.ShardInfo, _Mapping]] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("index", "state", "worker_pid", "standby_pid", "restarts", "in_flight", "device")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    STANDBY_PID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: WorkerState
    worker_pid: int
    standby_pid: int
    restarts: int
    in_flight: int
    device: str
    def __init__(self, index: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., worker_pid: _Optional[int] = ..., standby_pid: _Optional[int] = ..., restarts: _Optional[int] = ..., in_flight: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...
