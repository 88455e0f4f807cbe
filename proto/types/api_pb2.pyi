import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetServerVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerVersionResponse(_message.Message):
    __slots__ = ("major", "minor", "patch", "revision")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    patch: int
    revision: str
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ..., patch: _Optional[int] = ..., revision: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("id", "bundlePath", "checkpoint", "stdin", "stdout", "stderr", "labels", "noPivotRoot", "runtime", "runtimeArgs", "checkpointDir")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLEPATH_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NOPIVOTROOT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIMEARGS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTDIR_FIELD_NUMBER: _ClassVar[int]
    id: str
    bundlePath: str
    checkpoint: str
    stdin: str
    stdout: str
    stderr: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    noPivotRoot: bool
    runtime: str
    runtimeArgs: _containers.RepeatedScalarFieldContainer[str]
    checkpointDir: str
    def __init__(self, id: _Optional[str] = ..., bundlePath: _Optional[str] = ..., checkpoint: _Optional[str] = ..., stdin: _Optional[str] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., noPivotRoot: _Optional[bool] = ..., runtime: _Optional[str] = ..., runtimeArgs: _Optional[_Iterable[str]] = ..., checkpointDir: _Optional[str] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("id", "pid", "signal")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    pid: str
    signal: int
    def __init__(self, id: _Optional[str] = ..., pid: _Optional[str] = ..., signal: _Optional[int] = ...) -> None: ...

class SignalResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class User(_message.Message):
    __slots__ = ("uid", "gid", "additionalGids")
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ADDITIONALGIDS_FIELD_NUMBER: _ClassVar[int]
    uid: int
    gid: int
    additionalGids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, uid: _Optional[int] = ..., gid: _Optional[int] = ..., additionalGids: _Optional[_Iterable[int]] = ...) -> None: ...

class Rlimit(_message.Message):
    __slots__ = ("type", "soft", "hard")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    type: str
    soft: int
    hard: int
    def __init__(self, type: _Optional[str] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("name", "exit", "tcp", "unixSockets", "shell", "emptyNS", "preDump", "parentCheckpoint", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    UNIXSOCKETS_FIELD_NUMBER: _ClassVar[int]
    SHELL_FIELD_NUMBER: _ClassVar[int]
    EMPTYNS_FIELD_NUMBER: _ClassVar[int]
    PREDUMP_FIELD_NUMBER: _ClassVar[int]
    PARENTCHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    exit: bool
    tcp: bool
    unixSockets: bool
    shell: bool
    emptyNS: _containers.RepeatedScalarFieldContainer[str]
    preDump: bool
    parentCheckpoint: str
    created: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., exit: _Optional[bool] = ..., tcp: _Optional[bool] = ..., unixSockets: _Optional[bool] = ..., shell: _Optional[bool] = ..., emptyNS: _Optional[_Iterable[str]] = ..., preDump: _Optional[bool] = ..., parentCheckpoint: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCheckpointRequest(_message.Message):
    __slots__ = ("id", "checkpoint", "checkpointDir")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTDIR_FIELD_NUMBER: _ClassVar[int]
    id: str
    checkpoint: Checkpoint
    checkpointDir: str
    def __init__(self, id: _Optional[str] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., checkpointDir: _Optional[str] = ...) -> None: ...

class CreateCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteCheckpointRequest(_message.Message):
    __slots__ = ("id", "name", "checkpointDir")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTDIR_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    checkpointDir: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., checkpointDir: _Optional[str] = ...) -> None: ...

class DeleteCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCheckpointRequest(_message.Message):
    __slots__ = ("id", "checkpointDir")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTDIR_FIELD_NUMBER: _ClassVar[int]
    id: str
    checkpointDir: str
    def __init__(self, id: _Optional[str] = ..., checkpointDir: _Optional[str] = ...) -> None: ...

class ListCheckpointResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("pid", "terminal", "user", "args", "env", "cwd", "systemPid", "stdin", "stdout", "stderr", "capabilities", "apparmorProfile", "selinuxLabel", "noNewPrivileges", "rlimits")
    PID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    SYSTEMPID_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    APPARMORPROFILE_FIELD_NUMBER: _ClassVar[int]
    SELINUXLABEL_FIELD_NUMBER: _ClassVar[int]
    NONEWPRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    RLIMITS_FIELD_NUMBER: _ClassVar[int]
    pid: str
    terminal: bool
    user: User
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    systemPid: int
    stdin: str
    stdout: str
    stderr: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    apparmorProfile: str
    selinuxLabel: str
    noNewPrivileges: bool
    rlimits: _containers.RepeatedCompositeFieldContainer[Rlimit]
    def __init__(self, pid: _Optional[str] = ..., terminal: _Optional[bool] = ..., user: _Optional[_Union[User, _Mapping]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., systemPid: _Optional[int] = ..., stdin: _Optional[str] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., apparmorProfile: _Optional[str] = ..., selinuxLabel: _Optional[str] = ..., noNewPrivileges: _Optional[bool] = ..., rlimits: _Optional[_Iterable[_Union[Rlimit, _Mapping]]] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("id", "bundlePath", "processes", "status", "labels", "pids", "runtime")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLEPATH_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    bundlePath: str
    processes: _containers.RepeatedCompositeFieldContainer[Process]
    status: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    pids: _containers.RepeatedScalarFieldContainer[int]
    runtime: str
    def __init__(self, id: _Optional[str] = ..., bundlePath: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., status: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., pids: _Optional[_Iterable[int]] = ..., runtime: _Optional[str] = ...) -> None: ...

class Machine(_message.Message):
    __slots__ = ("cpus", "memory")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpus: int
    memory: int
    def __init__(self, cpus: _Optional[int] = ..., memory: _Optional[int] = ...) -> None: ...

class StateResponse(_message.Message):
    __slots__ = ("containers", "machine")
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    machine: Machine
    def __init__(self, containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ..., machine: _Optional[_Union[Machine, _Mapping]] = ...) -> None: ...

class UpdateResource(_message.Message):
    __slots__ = ("blkioWeight", "cpuShares", "cpuPeriod", "cpuQuota", "cpusetCpus", "cpusetMems", "memoryLimit", "memorySwap", "memoryReservation", "kernelMemoryLimit", "kernelTCPMemoryLimit", "blkioLeafWeight")
    BLKIOWEIGHT_FIELD_NUMBER: _ClassVar[int]
    CPUSHARES_FIELD_NUMBER: _ClassVar[int]
    CPUPERIOD_FIELD_NUMBER: _ClassVar[int]
    CPUQUOTA_FIELD_NUMBER: _ClassVar[int]
    CPUSETCPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSETMEMS_FIELD_NUMBER: _ClassVar[int]
    MEMORYLIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORYSWAP_FIELD_NUMBER: _ClassVar[int]
    MEMORYRESERVATION_FIELD_NUMBER: _ClassVar[int]
    KERNELMEMORYLIMIT_FIELD_NUMBER: _ClassVar[int]
    KERNELTCPMEMORYLIMIT_FIELD_NUMBER: _ClassVar[int]
    BLKIOLEAFWEIGHT_FIELD_NUMBER: _ClassVar[int]
    blkioWeight: int
    cpuShares: int
    cpuPeriod: int
    cpuQuota: int
    cpusetCpus: str
    cpusetMems: str
    memoryLimit: int
    memorySwap: int
    memoryReservation: int
    kernelMemoryLimit: int
    kernelTCPMemoryLimit: int
    blkioLeafWeight: int
    def __init__(self, blkioWeight: _Optional[int] = ..., cpuShares: _Optional[int] = ..., cpuPeriod: _Optional[int] = ..., cpuQuota: _Optional[int] = ..., cpusetCpus: _Optional[str] = ..., cpusetMems: _Optional[str] = ..., memoryLimit: _Optional[int] = ..., memorySwap: _Optional[int] = ..., memoryReservation: _Optional[int] = ..., kernelMemoryLimit: _Optional[int] = ..., kernelTCPMemoryLimit: _Optional[int] = ..., blkioLeafWeight: _Optional[int] = ...) -> None: ...

class UpdateContainerRequest(_message.Message):
    __slots__ = ("id", "pid", "status", "resources")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    id: str
    pid: str
    status: str
    resources: UpdateResource
    def __init__(self, id: _Optional[str] = ..., pid: _Optional[str] = ..., status: _Optional[str] = ..., resources: _Optional[_Union[UpdateResource, _Mapping]] = ...) -> None: ...

class UpdateContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("timestamp", "storedOnly", "id")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STOREDONLY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    storedOnly: bool
    id: str
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., storedOnly: _Optional[bool] = ..., id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "id", "status", "pid", "timestamp")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    status: int
    pid: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., status: _Optional[int] = ..., pid: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
