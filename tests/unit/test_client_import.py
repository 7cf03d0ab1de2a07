"""The client package: light imports, public names, error mapping, conversions."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import subprocess
import sys
from typing import Any

import bots_client
import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_client import (
    AuthError,
    BotsError,
    ConflictError,
    EstimatorKind,
    InvalidRequestError,
    NotFoundError,
    Outcome,
    OverloadedError,
    PoolConfig,
    PoolHeader,
    PoolInfo,
    SelectionMode,
    SelectionState,
    Task,
    TaskPosterior,
    UnavailableError,
    _aio,
    _channel,
    _client,
    _errors,
    _types,
)
from bots_client import _convert as cv
from hypothesis import given
from hypothesis import strategies as st

# --- imports and public names ----------------------------------------------------


def test_importing_the_client_loads_no_server_dependencies() -> None:
    code = (
        "import json, sys, bots_client\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'redis', 'bots_core', 'bots_server'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_all_is_sorted_and_names_exist() -> None:
    assert bots_client.__all__ == sorted(bots_client.__all__)
    assert len(set(bots_client.__all__)) == len(bots_client.__all__)
    for name in bots_client.__all__:
        assert hasattr(bots_client, name), name


def test_all_exports_every_public_class() -> None:
    public = {
        name
        for module in (_types, _errors, _client, _aio)
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    }
    assert public <= set(bots_client.__all__)


def test_implementation_modules_are_private() -> None:
    modules = {name for name, obj in vars(bots_client).items() if inspect.ismodule(obj)}
    assert all(name.startswith("_") for name in modules), modules


def test_returned_types_are_frozen_dataclasses() -> None:
    public = [getattr(bots_client, name) for name in bots_client.__all__]
    classes = [c for c in public if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert {c.__name__ for c in classes} >= {
        "PoolConfig", "Task", "PoolInfo", "PoolHeader", "SelectedTask", "Selection",
        "Outcome", "ReportResult", "TaskPosterior",
    }  # fmt: skip
    for cls in classes:
        first = dataclasses.fields(cls)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            object.__new__(cls).__setattr__(first, None)


# --- errors ----------------------------------------------------------------------


class _FakeRpcError(grpc.RpcError):
    """Stands in for gRPC's call error: only code() and details() are read."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_EXPECTED_CLASS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    grpc.StatusCode.CANCELLED: UnavailableError,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_maps_to_its_error_class(code: grpc.StatusCode) -> None:
    err = _errors.error_from_rpc(_FakeRpcError(code, "the details"))
    assert type(err) is _EXPECTED_CLASS.get(code, BotsError)
    assert isinstance(err, BotsError)
    assert err.code is code
    assert err.details == "the details"
    assert code.name in str(err)


def test_error_without_details_still_has_a_message() -> None:
    err = _errors.error_from_rpc(_FakeRpcError(grpc.StatusCode.INTERNAL, ""))
    assert err.details
    assert type(err) is BotsError


def test_error_tree_is_drawn_in_the_module_docstring() -> None:
    doc = _errors.__doc__ or ""
    for cls in {*_EXPECTED_CLASS.values(), BotsError}:
        assert cls.__name__ in doc


# --- channel settings -----------------------------------------------------------------


def test_service_config_retries_unavailable_with_backoff_and_throttling() -> None:
    config = _channel.service_config(retries=3)
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "bots.v1.TaskSelector"}]
    policy = method["retryPolicy"]
    assert policy["maxAttempts"] == 4
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["initialBackoff"].endswith("s") and policy["maxBackoff"].endswith("s")
    assert policy["backoffMultiplier"] > 1
    assert config["retryThrottling"]["maxTokens"] > 0


def test_service_config_caps_attempts_and_allows_no_retries() -> None:
    assert _channel.service_config(50)["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 5
    assert "methodConfig" not in _channel.service_config(0)


def test_channel_options_set_limits_and_let_callers_override() -> None:
    opts = dict(_channel.channel_options(5, [("grpc.max_receive_message_length", 1024)]))
    assert opts["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert opts["grpc.max_receive_message_length"] == 1024
    assert opts["grpc.enable_retries"] == 1
    assert json.loads(opts["grpc.service_config"]) == _channel.service_config(5)


def test_token_goes_in_metadata_only_without_tls() -> None:
    assert _channel.call_metadata("s3cret", token_in_credentials=False) == (
        ("authorization", "Bearer s3cret"),
    )
    assert _channel.call_metadata("s3cret", token_in_credentials=True) is None
    assert _channel.call_metadata(None, token_in_credentials=False) is None


def test_client_rejects_bad_timeouts_and_retries() -> None:
    with pytest.raises(ValueError, match="timeout"):
        bots_client.SelectorClient(timeout=0)
    with pytest.raises(ValueError, match="retries"):
        bots_client.SelectorClient(retries=-1)


def test_backoff_grows_and_is_bounded() -> None:
    for attempt in range(10):
        delay = _channel.backoff_seconds(attempt)
        ceiling = min(_channel.MAX_BACKOFF_S, _channel.INITIAL_BACKOFF_S * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling


# --- conversions ------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (dataclass == treats NaN as unequal)."""

    def norm(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return (
                type(x).__name__,
                tuple(norm(getattr(x, f.name)) for f in dataclasses.fields(x)),
            )
        if isinstance(x, (tuple, list)):
            return tuple(norm(v) for v in x)
        if isinstance(x, float) and math.isnan(x):
            return "NaN"
        return x

    return bool(norm(a) == norm(b))


unit = st.floats(0, 1, allow_nan=False)
positive = st.floats(1e-6, 1e6, allow_nan=False)
any_float = st.floats(allow_nan=True, allow_infinity=False)
counts = st.integers(0, 2**63)
keys = st.text(min_size=1, max_size=20)

configs = st.builds(
    PoolConfig,
    forgetting=st.none() | unit,
    implicit_weight=st.none() | unit,
    pseudo_rollouts=st.none() | positive,
    target=st.none() | unit,
    momentum=st.none() | unit,
    mode=st.none() | st.sampled_from(SelectionMode),
    temperature=st.none() | positive,
    seed=st.none() | st.integers(0, 2**64 - 1),
    selection_wait_seconds=st.none() | positive,
    min_reference_gap=st.none() | unit,
    estimator=st.none() | st.sampled_from(EstimatorKind),
)
tasks = st.builds(
    Task,
    key=keys,
    weak=st.none() | unit,
    strong=st.none() | unit,
    prior_alpha=st.none() | positive,
    prior_beta=st.none() | positive,
)
pool_infos = st.builds(
    PoolInfo,
    name=keys,
    config=configs,
    task_count=counts,
    steps_applied=counts,
    open_selections=counts,
    last_effective_task_ratio=any_float,
    rolling_effective_task_ratio=any_float,
    capability=any_float,
    tasks_with_references=counts,
    selections_opened=counts,
    selections_expired=counts,
    mean_posterior=any_float,
)
headers = st.builds(
    PoolHeader,
    name=keys,
    config=configs,
    task_count=counts,
    steps_applied=counts,
    capability=any_float,
    selections_opened=counts,
)
posteriors = st.builds(TaskPosterior, task=tasks, alpha=positive, beta=positive)


@given(configs)
def test_config_round_trips_through_the_wire(config: PoolConfig) -> None:
    msg = pb.PoolConfig.FromString(cv.config_to_pb(config).SerializeToString())
    assert cv.config_from_pb(msg) == config


@given(configs)
def test_config_round_trips_through_a_dict(config: PoolConfig) -> None:
    assert PoolConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@given(tasks)
def test_task_round_trips_and_unset_stays_unset(task: Task) -> None:
    msg = pb.Task.FromString(cv.task_to_pb(task).SerializeToString())
    assert msg.HasField("weak") == (task.weak is not None)
    assert cv.task_from_pb(msg) == task


@given(pool_infos)
def test_pool_info_round_trips_and_nan_stays_nan(info: PoolInfo) -> None:
    msg = pb.PoolInfo.FromString(cv.pool_info_to_pb(info).SerializeToString())
    assert _same(cv.pool_info_from_pb(msg), info)


@given(headers)
def test_header_round_trips(header: PoolHeader) -> None:
    msg = pb.PoolHeader.FromString(cv.header_to_pb(header).SerializeToString())
    assert _same(cv.header_from_pb(msg), header)


@given(posteriors)
def test_posterior_round_trips(posterior: TaskPosterior) -> None:
    msg = pb.TaskPosterior.FromString(cv.posterior_to_pb(posterior).SerializeToString())
    assert cv.posterior_from_pb(msg) == posterior


def test_config_from_dict_parses_strings_and_rejects_unknown_fields() -> None:
    config = PoolConfig.from_dict({"forgetting": "0.2", "mode": "GREEDY", "seed": "7"})
    assert config == PoolConfig(forgetting=0.2, mode=SelectionMode.GREEDY, seed=7)
    with pytest.raises(ValueError, match="unknown config field"):
        PoolConfig.from_dict({"forgeting": 0.2})
    with pytest.raises(ValueError, match="mode"):
        PoolConfig.from_dict({"mode": "best"})
    with pytest.raises(ValueError, match="number"):
        PoolConfig.from_dict({"target": "half"})


def test_selection_from_wire_keeps_order_and_helpers() -> None:
    msg = pb.SelectBatchResponse(
        selection_id="s1",
        tasks=[
            pb.SelectedTask(key="b", index=1, sampled_p=0.5, posterior_mean=0.4),
            pb.SelectedTask(key="a", index=0, sampled_p=0.6, posterior_mean=0.5),
        ],
        replayed=True,
        posterior_version=3,
        expected_trials=8,
    )
    sel = cv.selection_from_pb(msg)
    assert sel.keys == ("b", "a")
    assert sel.indices == (1, 0)
    assert sel.replayed and sel.posterior_version == 3 and sel.expected_trials == 8.0


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        (pb.SELECTION_STATE_UNSPECIFIED, SelectionState.UNSPECIFIED),
        (pb.SELECTION_STATE_OPEN, SelectionState.OPEN),
        (pb.SELECTION_STATE_APPLIED, SelectionState.APPLIED),
        (pb.SELECTION_STATE_DISCARDED, SelectionState.DISCARDED),
    ],
)
def test_report_result_maps_selection_state(wire: Any, state: SelectionState) -> None:
    result = cv.report_result_from_pb(
        pb.ReportOutcomesResponse(
            duplicate=True, selection_state=wire, steps_applied=1, posterior_version=4
        )
    )
    assert result.selection_state is state
    assert result.duplicate and result.steps_applied == 1 and result.posterior_version == 4


def test_outcomes_accept_objects_tuples_and_mappings() -> None:
    expected = [Outcome("a", 1.0, 4.0), Outcome("b", 0.5, 2.0)]
    assert cv.coerce_outcomes(expected) == expected
    assert cv.coerce_outcomes([("a", 1, 4), ("b", 0.5, 2)]) == expected
    assert cv.coerce_outcomes({"a": (1, 4), "b": (0.5, 2)}) == expected
    with pytest.raises(TypeError):
        cv.coerce_outcomes(["a"])  # type: ignore[list-item]


def test_tasks_accept_objects_keys_and_mappings() -> None:
    given: list[cv.TaskLike] = [
        Task("a", prior_beta=2),
        "b",
        {"key": "c", "weak": 0.1, "strong": 0.2},
    ]
    msg = cv.add_tasks_request("p", given)
    assert [cv.task_from_pb(t) for t in msg.tasks] == [
        Task("a", prior_beta=2.0),
        Task("b"),
        Task("c", weak=0.1, strong=0.2),
    ]
    assert cv.create_request("p", "bots", None, given).tasks == msg.tasks
    with pytest.raises(ValueError, match="unknown task field"):
        cv.task_fields({"key": "d", "wek": 0.1})
    with pytest.raises(ValueError, match="needs a 'key'"):
        cv.task_fields({"weak": 0.1})
    with pytest.raises(TypeError):
        cv.task_fields(3)  # type: ignore[arg-type]
    assert [len(b) for b in cv.batched(range(5), 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="chunk_size"):
        list(cv.batched(["a"], 0))


def _header(name: str = "p") -> PoolHeader:
    return PoolHeader(name, PoolConfig(), 3, 1, math.nan, 2)


def test_import_stream_sends_the_header_once_and_renames() -> None:
    items = [TaskPosterior(Task(f"t{i}"), 1.0 + i, 2.0) for i in range(5)]
    msgs = list(cv.import_requests(_header(), items, "copy", chunk_size=2))
    assert [len(m.tasks) for m in msgs] == [2, 2, 1]
    assert [m.HasField("header") for m in msgs] == [True, False, False]
    assert msgs[0].header.name == "copy"

    pairs = [(_header(), items[:3]), (_header(), items[3:])]
    msgs = list(cv.import_requests(pairs, None, None, chunk_size=100))
    assert [m.HasField("header") for m in msgs] == [True, False]
    assert msgs[0].header.name == "p"


def test_import_stream_of_an_empty_pool_is_one_header_chunk() -> None:
    (msg,) = cv.import_requests(_header(), [], None, chunk_size=10)
    assert msg.HasField("header") and not msg.tasks
    with pytest.raises(ValueError, match="nothing to import"):
        list(cv.import_requests([], None, None, chunk_size=10))
    with pytest.raises(TypeError):
        cv.import_requests([], [], None, chunk_size=10)


def test_export_reader_repeats_the_header_and_needs_it_first() -> None:
    reader = cv.ExportReader()
    first = pb.PosteriorChunk(header=cv.header_to_pb(_header()))
    second = pb.PosteriorChunk(tasks=[cv.posterior_to_pb(TaskPosterior(Task("x"), 2.0, 3.0))])
    h1, t1 = reader.read(first)
    h2, t2 = reader.read(second)
    assert h1 is h2 and t1 == [] and t2[0].mean == pytest.approx(0.4)
    with pytest.raises(BotsError, match="header"):
        cv.ExportReader().read(second)
