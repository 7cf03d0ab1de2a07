"""Fuzzing raw protobuf requests through a real server on both stores.

Whatever arrives: never INTERNAL or UNKNOWN, a refused request changes nothing
(the export before equals the export after), the server stays SERVING, and
accepted evidence never makes a posterior non-finite.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_server._app import start_server
from bots_server._settings import ServerSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from service_procs import RedisProcess

KEYS = [f"t{k}" for k in range(8)]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class Service:
    """A server, a stub, and the selection ids it handed out (for reports to aim at)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = selector_pb2_grpc.TaskSelectorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.selections: list[str] = []

    def ensure_pool(self) -> None:
        self.stub.CreatePool(
            pb.CreatePoolRequest(name="p", tasks=[pb.Task(key=k) for k in KEYS]), timeout=10
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused request must leave unchanged."""
        pools = tuple(
            (p.name, p.task_count, p.steps_applied, p.open_selections, p.selections_opened)
            for p in self.stub.ListPools(pb.ListPoolsRequest(), timeout=10).pools
        )
        posts = tuple(
            (tp.task.key, tp.alpha, tp.beta)
            for chunk in self.stub.ExportPosteriors(
                pb.ExportPosteriorsRequest(pool="p"), timeout=10
            )
            for tp in chunk.tasks
        )
        return pools, posts


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    redis_proc = RedisProcess(tmp / "redis").start() if request.param == "redis" else None
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp / "data"),
        metrics_port=-1,
        redis_url=redis_proc.url if redis_proc else "",
        checkpoint_every=8,
        snapshot_every=8,
        max_open_selections=64,
    )
    server = start_server(settings)
    svc = Service(server.address)
    svc.ensure_pool()
    yield svc
    svc.channel.close()
    server.stop(grace=0)
    if redis_proc is not None:
        redis_proc.stop()


# ------------------------------------------------------------------ strategies
names = st.one_of(
    st.just("p"),
    st.sampled_from(["p", "q", "", ".x", "a/b", "nope"]),
    st.text(max_size=40),
    st.integers(1, 3).map(lambda k: "ab" * 10_000 * k),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=20), st.just("k" * 20_000))
numbers = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 4.0]),  # often valid, so that evidence gets accepted
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 8.0, -1.0, 9e11, 1e12, 1e13, 1e308, 5e-324]),
)
maybe = st.one_of(st.none(), numbers)


@st.composite
def configs(draw: Any) -> pb.PoolConfig:
    fields = ["forgetting", "implicit_weight", "pseudo_rollouts", "target", "momentum",
              "temperature", "selection_wait_seconds", "min_reference_gap"]  # fmt: skip
    values = {f: v for f in fields if (v := draw(maybe)) is not None}
    return pb.PoolConfig(**values)


@st.composite
def tasks(draw: Any) -> list[pb.Task]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        t = pb.Task(key=draw(keys))
        for f in ("weak", "strong", "prior_alpha", "prior_beta"):
            v = draw(maybe)
            if v is not None:
                setattr(t, f, v)
        out.append(t)
    return out


valid_outcome = st.builds(
    lambda k, t, share: pb.Outcome(task_key=k, successes=t * share, trials=t),
    st.sampled_from(KEYS), st.sampled_from([1.0, 2.0, 4.0, 8.0]), st.sampled_from([0, 0.5, 1]),
)  # fmt: skip


@st.composite
def outcomes(draw: Any) -> list[pb.Outcome]:
    any_outcome = st.builds(pb.Outcome, task_key=keys, successes=numbers, trials=numbers)
    one = st.one_of(valid_outcome, valid_outcome, any_outcome)
    return [draw(one) for _ in range(draw(st.integers(0, 4)))]


# A selection id, or the position of a recent one (resolved when the call is made, so
# that what hypothesis draws never depends on the server's answers).
selection_ids = st.one_of(
    st.just(""),
    st.integers(0, 4),
    st.integers(0, 4),
    st.text(max_size=30),
    st.just("s" * 20_000),
)


def resolve(s: Service, sel: str | int) -> str:
    if isinstance(sel, str):
        return sel
    return s.selections[-1 - sel] if len(s.selections) > sel else ""


Call = Callable[[Service], Any]


@st.composite
def calls(draw: Any) -> tuple[str, Call]:
    kind = draw(
        st.sampled_from(["create", "add", "get", "delete", "select", "report", "export", "import"])
    )
    u64 = st.one_of(st.integers(0, 40), st.just(2**64 - 1))
    u32 = st.one_of(st.integers(0, 40), st.just(2**32 - 1))
    if kind == "create":
        req = pb.CreatePoolRequest(
            name=draw(names), preset=draw(st.sampled_from(["", "bots", "nope"])),
            config=draw(configs()), tasks=draw(tasks()),
        )  # fmt: skip
        return kind, lambda s: s.stub.CreatePool(req, timeout=10)
    if kind == "add":
        add = pb.AddTasksRequest(pool=draw(names), tasks=draw(tasks()))
        return kind, lambda s: s.stub.AddTasks(add, timeout=10)
    if kind == "get":
        get = pb.GetPoolRequest(pool=draw(names))
        return kind, lambda s: s.stub.GetPool(get, timeout=10)
    if kind == "delete":
        name = draw(names.filter(lambda n: n != "p"))
        return kind, lambda s: s.stub.DeletePool(pb.DeletePoolRequest(pool=name), timeout=10)
    if kind == "select":
        sel = pb.SelectBatchRequest(
            pool="p" if draw(st.integers(0, 9)) < 7 else draw(names), batch_size=draw(u32), run_id=draw(st.text(max_size=8)),
            step=draw(u64), expected_trials=draw(numbers),
        )  # fmt: skip

        def select(s: Service) -> Any:
            reply = s.stub.SelectBatch(sel, timeout=10)
            s.selections.append(reply.selection_id)
            return reply

        return kind, select
    if kind == "report":
        pool = "p" if draw(st.integers(0, 9)) < 7 else draw(names)
        rid = draw(st.one_of(st.just(""), st.text(max_size=200)))
        target, outs, final = draw(selection_ids), draw(outcomes()), draw(st.booleans())

        def report(s: Service) -> Any:
            req = pb.ReportOutcomesRequest(
                pool=pool, request_id=rid or uuid.uuid4().hex, selection_id=resolve(s, target),
                outcomes=outs, final=final,
            )  # fmt: skip
            return s.stub.ReportOutcomes(req, timeout=10)

        return kind, report
    if kind == "export":
        exp = pb.ExportPosteriorsRequest(pool=draw(names), chunk_size=draw(u32))
        return kind, lambda s: list(s.stub.ExportPosteriors(exp, timeout=10))
    header = pb.PoolHeader(
        name=draw(names), config=draw(configs()), task_count=draw(u64),
        steps_applied=draw(u64), capability=draw(numbers), selections_opened=draw(u64),
    )  # fmt: skip
    posts = [
        pb.TaskPosterior(task=t, alpha=draw(numbers), beta=draw(numbers)) for t in draw(tasks())
    ]
    chunks = [pb.PosteriorChunk(header=header, tasks=posts)]
    if draw(st.booleans()):
        chunks.append(pb.PosteriorChunk(tasks=posts))
    return kind, lambda s: s.stub.ImportPosteriors(iter(chunks), timeout=10)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_requests_never_fail_internally_and_refusals_change_nothing(service, data):
    # A valid step first, so that the pool keeps learning between the hostile calls.
    size = data.draw(st.integers(1, 4))
    sel = service.stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=size), timeout=10)
    service.selections.append(sel.selection_id)
    shares = data.draw(st.lists(st.sampled_from([0, 0.5, 1]), min_size=size, max_size=size))
    service.stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p", request_id=uuid.uuid4().hex, selection_id=sel.selection_id,
            outcomes=[pb.Outcome(task_key=t.key, successes=16 * x, trials=16)
                      for t, x in zip(sel.tasks, shares)],
            final=data.draw(st.booleans()),
        ),
        timeout=10,
    )  # fmt: skip
    kind, call = data.draw(calls())
    before = service.snapshot()
    try:
        call(service)
        refused = None
        event(f"{kind}: accepted")
    except grpc.RpcError as err:
        refused = err
        event(f"{kind}: {err.code().name}")
    if refused is not None:
        assert refused.code() not in NEVER, (kind, refused.code(), refused.details())
        assert len(refused.details() or "") < 2048, (kind, len(refused.details()))
        assert service.snapshot() == before, (kind, refused.code(), refused.details())
    health = service.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    _, posts = service.snapshot()
    assert all(math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0 for _, a, b in posts)
