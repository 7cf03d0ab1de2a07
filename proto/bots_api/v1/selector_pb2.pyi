from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SelectionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_MODE_UNSPECIFIED: _ClassVar[SelectionMode]
    SELECTION_MODE_THOMPSON: _ClassVar[SelectionMode]
    SELECTION_MODE_GREEDY: _ClassVar[SelectionMode]
    SELECTION_MODE_SOFTMAX: _ClassVar[SelectionMode]
    SELECTION_MODE_UNIFORM: _ClassVar[SelectionMode]

class EstimatorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESTIMATOR_KIND_UNSPECIFIED: _ClassVar[EstimatorKind]
    ESTIMATOR_KIND_INTERPOLATION: _ClassVar[EstimatorKind]
    ESTIMATOR_KIND_SIMILARITY: _ClassVar[EstimatorKind]
    ESTIMATOR_KIND_BOTH: _ClassVar[EstimatorKind]

class SelectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_STATE_UNSPECIFIED: _ClassVar[SelectionState]
    SELECTION_STATE_OPEN: _ClassVar[SelectionState]
    SELECTION_STATE_APPLIED: _ClassVar[SelectionState]
    SELECTION_STATE_DISCARDED: _ClassVar[SelectionState]
SELECTION_MODE_UNSPECIFIED: SelectionMode
SELECTION_MODE_THOMPSON: SelectionMode
SELECTION_MODE_GREEDY: SelectionMode
SELECTION_MODE_SOFTMAX: SelectionMode
SELECTION_MODE_UNIFORM: SelectionMode
ESTIMATOR_KIND_UNSPECIFIED: EstimatorKind
ESTIMATOR_KIND_INTERPOLATION: EstimatorKind
ESTIMATOR_KIND_SIMILARITY: EstimatorKind
ESTIMATOR_KIND_BOTH: EstimatorKind
SELECTION_STATE_UNSPECIFIED: SelectionState
SELECTION_STATE_OPEN: SelectionState
SELECTION_STATE_APPLIED: SelectionState
SELECTION_STATE_DISCARDED: SelectionState

class PoolConfig(_message.Message):
    __slots__ = ("forgetting", "implicit_weight", "pseudo_rollouts", "target", "momentum", "mode", "temperature", "seed", "selection_wait_seconds", "min_reference_gap", "estimator")
    FORGETTING_FIELD_NUMBER: _ClassVar[int]
    IMPLICIT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SELECTION_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_REFERENCE_GAP_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    forgetting: float
    implicit_weight: float
    pseudo_rollouts: float
    target: float
    momentum: float
    mode: SelectionMode
    temperature: float
    seed: int
    selection_wait_seconds: float
    min_reference_gap: float
    estimator: EstimatorKind
    def __init__(self, forgetting: _Optional[float] = ..., implicit_weight: _Optional[float] = ..., pseudo_rollouts: _Optional[float] = ..., target: _Optional[float] = ..., momentum: _Optional[float] = ..., mode: _Optional[_Union[SelectionMode, str]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., selection_wait_seconds: _Optional[float] = ..., min_reference_gap: _Optional[float] = ..., estimator: _Optional[_Union[EstimatorKind, str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("key", "weak", "strong", "prior_alpha", "prior_beta", "embedding")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WEAK_FIELD_NUMBER: _ClassVar[int]
    STRONG_FIELD_NUMBER: _ClassVar[int]
    PRIOR_ALPHA_FIELD_NUMBER: _ClassVar[int]
    PRIOR_BETA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    key: str
    weak: float
    strong: float
    prior_alpha: float
    prior_beta: float
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, key: _Optional[str] = ..., weak: _Optional[float] = ..., strong: _Optional[float] = ..., prior_alpha: _Optional[float] = ..., prior_beta: _Optional[float] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class CreatePoolRequest(_message.Message):
    __slots__ = ("name", "preset", "config", "tasks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    preset: str
    config: PoolConfig
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, name: _Optional[str] = ..., preset: _Optional[str] = ..., config: _Optional[_Union[PoolConfig, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class CreatePoolResponse(_message.Message):
    __slots__ = ("pool", "created", "tasks_added")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TASKS_ADDED_FIELD_NUMBER: _ClassVar[int]
    pool: PoolInfo
    created: bool
    tasks_added: int
    def __init__(self, pool: _Optional[_Union[PoolInfo, _Mapping]] = ..., created: _Optional[bool] = ..., tasks_added: _Optional[int] = ...) -> None: ...

class AddTasksRequest(_message.Message):
    __slots__ = ("pool", "tasks")
    POOL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, pool: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class AddTasksResponse(_message.Message):
    __slots__ = ("tasks_added", "task_count")
    TASKS_ADDED_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    tasks_added: int
    task_count: int
    def __init__(self, tasks_added: _Optional[int] = ..., task_count: _Optional[int] = ...) -> None: ...

class GetPoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class GetPoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: PoolInfo
    def __init__(self, pool: _Optional[_Union[PoolInfo, _Mapping]] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ...) -> None: ...

class DeletePoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class DeletePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolInfo(_message.Message):
    __slots__ = ("name", "config", "task_count", "steps_applied", "open_selections", "last_effective_task_ratio", "rolling_effective_task_ratio", "capability", "tasks_with_references", "selections_opened", "selections_expired", "mean_posterior", "runs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    STEPS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    OPEN_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_EFFECTIVE_TASK_RATIO_FIELD_NUMBER: _ClassVar[int]
    ROLLING_EFFECTIVE_TASK_RATIO_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    TASKS_WITH_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_OPENED_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    MEAN_POSTERIOR_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    open_selections: int
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    capability: float
    tasks_with_references: int
    selections_opened: int
    selections_expired: int
    mean_posterior: float
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[PoolConfig, _Mapping]] = ..., task_count: _Optional[int] = ..., steps_applied: _Optional[int] = ..., open_selections: _Optional[int] = ..., last_effective_task_ratio: _Optional[float] = ..., rolling_effective_task_ratio: _Optional[float] = ..., capability: _Optional[float] = ..., tasks_with_references: _Optional[int] = ..., selections_opened: _Optional[int] = ..., selections_expired: _Optional[int] = ..., mean_posterior: _Optional[float] = ..., runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "first_seen", "last_seen", "steps", "capability", "last_effective_task_ratio", "rolling_effective_task_ratio", "active", "offset")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    LAST_EFFECTIVE_TASK_RATIO_FIELD_NUMBER: _ClassVar[int]
    ROLLING_EFFECTIVE_TASK_RATIO_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    first_seen: float
    last_seen: float
    steps: int
    capability: float
    last_effective_task_ratio: float
    rolling_effective_task_ratio: float
    active: bool
    offset: float
    def __init__(self, run_id: _Optional[str] = ..., first_seen: _Optional[float] = ..., last_seen: _Optional[float] = ..., steps: _Optional[int] = ..., capability: _Optional[float] = ..., last_effective_task_ratio: _Optional[float] = ..., rolling_effective_task_ratio: _Optional[float] = ..., active: _Optional[bool] = ..., offset: _Optional[float] = ...) -> None: ...

class SelectBatchRequest(_message.Message):
    __slots__ = ("pool", "batch_size", "run_id", "step", "expected_trials", "wait_seconds")
    POOL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TRIALS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    batch_size: int
    run_id: str
    step: int
    expected_trials: float
    wait_seconds: float
    def __init__(self, pool: _Optional[str] = ..., batch_size: _Optional[int] = ..., run_id: _Optional[str] = ..., step: _Optional[int] = ..., expected_trials: _Optional[float] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class SelectedTask(_message.Message):
    __slots__ = ("key", "index", "sampled_p", "posterior_mean")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_P_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_MEAN_FIELD_NUMBER: _ClassVar[int]
    key: str
    index: int
    sampled_p: float
    posterior_mean: float
    def __init__(self, key: _Optional[str] = ..., index: _Optional[int] = ..., sampled_p: _Optional[float] = ..., posterior_mean: _Optional[float] = ...) -> None: ...

class SelectBatchResponse(_message.Message):
    __slots__ = ("selection_id", "tasks", "replayed", "posterior_version", "expected_trials")
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TRIALS_FIELD_NUMBER: _ClassVar[int]
    selection_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[SelectedTask]
    replayed: bool
    posterior_version: int
    expected_trials: float
    def __init__(self, selection_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[SelectedTask, _Mapping]]] = ..., replayed: _Optional[bool] = ..., posterior_version: _Optional[int] = ..., expected_trials: _Optional[float] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("task_key", "successes", "trials")
    TASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    task_key: str
    successes: float
    trials: float
    def __init__(self, task_key: _Optional[str] = ..., successes: _Optional[float] = ..., trials: _Optional[float] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("pool", "request_id", "selection_id", "outcomes", "final", "run_id")
    POOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    pool: str
    request_id: str
    selection_id: str
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    final: bool
    run_id: str
    def __init__(self, pool: _Optional[str] = ..., request_id: _Optional[str] = ..., selection_id: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., final: _Optional[bool] = ..., run_id: _Optional[str] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("duplicate", "selection_state", "steps_applied", "posterior_version")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    selection_state: SelectionState
    steps_applied: int
    posterior_version: int
    def __init__(self, duplicate: _Optional[bool] = ..., selection_state: _Optional[_Union[SelectionState, str]] = ..., steps_applied: _Optional[int] = ..., posterior_version: _Optional[int] = ...) -> None: ...

class ExportPosteriorsRequest(_message.Message):
    __slots__ = ("pool", "chunk_size")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    chunk_size: int
    def __init__(self, pool: _Optional[str] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class PoolHeader(_message.Message):
    __slots__ = ("name", "config", "task_count", "steps_applied", "capability", "selections_opened")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    STEPS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_OPENED_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: PoolConfig
    task_count: int
    steps_applied: int
    capability: float
    selections_opened: int
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[PoolConfig, _Mapping]] = ..., task_count: _Optional[int] = ..., steps_applied: _Optional[int] = ..., capability: _Optional[float] = ..., selections_opened: _Optional[int] = ...) -> None: ...

class TaskPosterior(_message.Message):
    __slots__ = ("task", "alpha", "beta")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    task: Task
    alpha: float
    beta: float
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ...) -> None: ...

class PosteriorChunk(_message.Message):
    __slots__ = ("header", "tasks")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    header: PoolHeader
    tasks: _containers.RepeatedCompositeFieldContainer[TaskPosterior]
    def __init__(self, header: _Optional[_Union[PoolHeader, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskPosterior, _Mapping]]] = ...) -> None: ...

class ImportPosteriorsResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: PoolInfo
    def __init__(self, pool: _Optional[_Union[PoolInfo, _Mapping]] = ...) -> None: ...
