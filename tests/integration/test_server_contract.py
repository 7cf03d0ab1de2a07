"""The bots.v1 contract against a real in-process gRPC server with the embedded store."""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
from bots_api.v1 import selector_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

Code = grpc.StatusCode


def tasks(n: int, refs: bool = True) -> list[pb.Task]:
    out = []
    for i in range(n):
        t = pb.Task(key=f"t{i}")
        if refs:
            t.weak, t.strong = (i % 10) / 20, 0.5 + (i % 10) / 20
        out.append(t)
    return out


def make_pool(stub, name="p", n=50, **config) -> pb.CreatePoolResponse:
    return stub.CreatePool(
        pb.CreatePoolRequest(name=name, tasks=tasks(n), config=pb.PoolConfig(**config))
    )


def expect(code: Code, fn, *args, match: str = "") -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()
    return info.value.details()


def outcomes(sel: pb.SelectBatchResponse, s: float = 8, t: float = 16) -> list[pb.Outcome]:
    return [pb.Outcome(task_key=x.key, successes=s, trials=t) for x in sel.tasks]


def posterior(stub, pool="p") -> dict[str, tuple[float, float]]:
    out = {}
    for chunk in stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool=pool)):
        for tp in chunk.tasks:
            out[tp.task.key] = (tp.alpha, tp.beta)
    return out


# ---------------------------------------------------------------- pools


def test_create_pool_twice_with_same_config_is_a_no_op(stub):
    first = make_pool(stub)
    again = make_pool(stub)
    assert first.created and not again.created
    assert again.tasks_added == 0 and again.pool.task_count == 50


def test_create_pool_with_other_config_is_already_exists(stub):
    make_pool(stub)
    expect(Code.ALREADY_EXISTS, lambda: make_pool(stub, forgetting=0.3), match="different config")


def test_create_pool_applies_preset_then_overrides(stub):
    r = stub.CreatePool(
        pb.CreatePoolRequest(
            name="dots", preset="implicit_only", tasks=tasks(3), config=pb.PoolConfig(seed=7)
        )
    )
    c = r.pool.config
    assert (c.forgetting, c.implicit_weight, c.mode, c.seed) == (
        1.0,
        1.0,
        pb.SELECTION_MODE_GREEDY,
        7,
    )


@pytest.mark.parametrize(
    "request_kwargs, match",
    [
        ({"name": "bad name"}, "pool name"),
        ({"name": ".hidden"}, "pool name"),
        ({"name": "p", "preset": "nope"}, "unknown preset"),
        ({"name": "p", "config": pb.PoolConfig(forgetting=1.5)}, "forgetting"),
        ({"name": "p", "config": pb.PoolConfig(target=math.nan)}, "target"),
        ({"name": "p", "tasks": [pb.Task(key="a", weak=0.2)]}, "go together"),
        ({"name": "p", "tasks": [pb.Task(key="a", weak=0.2, strong=1.2)]}, "strong"),
        ({"name": "p", "tasks": [pb.Task(key="a", prior_alpha=0)]}, "prior_alpha"),
        ({"name": "p", "tasks": [pb.Task(key="")]}, "task key"),
    ],
)
def test_create_pool_rejects_bad_input_and_creates_nothing(stub, request_kwargs, match):
    expect(
        Code.INVALID_ARGUMENT, stub.CreatePool, pb.CreatePoolRequest(**request_kwargs), match=match
    )
    assert list(stub.ListPools(pb.ListPoolsRequest()).pools) == []


def test_add_tasks_skips_identical_and_rejects_changed_tasks_atomically(stub):
    make_pool(stub, n=5)
    r = stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=tasks(8)))
    assert (r.tasks_added, r.task_count) == (3, 8)
    changed = [pb.Task(key="new1"), pb.Task(key="t0", weak=0.9, strong=1.0)]
    expect(Code.ALREADY_EXISTS, stub.AddTasks, pb.AddTasksRequest(pool="p", tasks=changed))
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.task_count == 8


def test_unknown_pool_is_not_found_everywhere(stub):
    expect(Code.NOT_FOUND, stub.GetPool, pb.GetPoolRequest(pool="x"))
    expect(Code.NOT_FOUND, stub.DeletePool, pb.DeletePoolRequest(pool="x"))
    expect(Code.NOT_FOUND, stub.AddTasks, pb.AddTasksRequest(pool="x", tasks=tasks(1)))
    expect(Code.NOT_FOUND, stub.SelectBatch, pb.SelectBatchRequest(pool="x", batch_size=1))
    expect(
        Code.NOT_FOUND,
        stub.ReportOutcomes,
        pb.ReportOutcomesRequest(
            pool="x", request_id="r", outcomes=[pb.Outcome(task_key="t0", successes=1, trials=1)]
        ),
    )
    expect(
        Code.NOT_FOUND, lambda: list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="x")))
    )


def test_delete_pool_removes_it_and_the_name_can_be_reused(stub):
    make_pool(stub)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=2, run_id="r", step=1))
    stub.DeletePool(pb.DeletePoolRequest(pool="p"))
    assert [p.name for p in stub.ListPools(pb.ListPoolsRequest()).pools] == []
    make_pool(stub)
    # A selection of the old incarnation is unknown to the new pool.
    req = pb.ReportOutcomesRequest(
        pool="p", request_id="z", selection_id=sel.selection_id, outcomes=outcomes(sel)
    )
    expect(Code.NOT_FOUND, stub.ReportOutcomes, req)


# ------------------------------------------------------------ selection


def test_same_run_and_step_returns_the_same_selection(stub):
    make_pool(stub)
    a = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=8, run_id="run", step=3))
    b = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=8, run_id="run", step=3))
    c = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=8, run_id="run", step=4))
    assert not a.replayed and b.replayed and not c.replayed
    assert a.selection_id == b.selection_id != c.selection_id
    assert [t.key for t in a.tasks] == [t.key for t in b.tasks]
    assert len({t.key for t in a.tasks}) == 8


def test_same_run_and_step_with_another_batch_size_is_already_exists(stub):
    make_pool(stub)
    stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=8, run_id="run", step=3))
    req = pb.SelectBatchRequest(pool="p", batch_size=9, run_id="run", step=3)
    expect(Code.ALREADY_EXISTS, stub.SelectBatch, req, match="already selected")


def test_anonymous_selections_are_never_replayed(stub):
    make_pool(stub)
    a = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=4))
    b = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=4))
    assert a.selection_id != b.selection_id and not b.replayed


@pytest.mark.parametrize("size", [0, 51])
def test_batch_size_out_of_range_is_invalid(stub, size):
    make_pool(stub)
    expect(
        Code.INVALID_ARGUMENT, stub.SelectBatch, pb.SelectBatchRequest(pool="p", batch_size=size)
    )
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.selections_opened == 0


def test_selected_tasks_carry_key_index_draw_and_mean(stub):
    make_pool(stub)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=5))
    for t in sel.tasks:
        assert t.key == f"t{t.index}"
        assert 0.0 <= t.sampled_p <= 1.0
        assert t.posterior_mean == pytest.approx(0.5)
    assert sel.expected_trials == 16


def test_same_seed_and_history_give_the_same_selections(stub):
    for name in ("a", "b"):
        make_pool(stub, name=name, seed=42)
    picks = {}
    for name in ("a", "b"):
        keys = []
        for step in range(5):
            sel = stub.SelectBatch(
                pb.SelectBatchRequest(pool=name, batch_size=6, run_id="r", step=step)
            )
            keys.append([t.key for t in sel.tasks])
            stub.ReportOutcomes(
                pb.ReportOutcomesRequest(
                    pool=name,
                    request_id=f"{name}{step}",
                    selection_id=sel.selection_id,
                    outcomes=[
                        pb.Outcome(task_key=t.key, successes=int(t.key[1:]) % 17, trials=16)
                        for t in sel.tasks
                    ],
                )
            )
        picks[name] = keys
    assert picks["a"] == picks["b"]
    assert posterior(stub, "a") == posterior(stub, "b")


# -------------------------------------------------------------- reports


def test_report_request_id_is_applied_once(stub):
    make_pool(stub)
    req = pb.ReportOutcomesRequest(
        pool="p", request_id="once", outcomes=[pb.Outcome(task_key="t1", successes=3, trials=4)]
    )
    first = stub.ReportOutcomes(req)
    before = posterior(stub)
    again = stub.ReportOutcomes(req)
    assert not first.duplicate and again.duplicate
    assert (again.steps_applied, again.posterior_version) == (1, 1)
    assert posterior(stub) == before
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied == 1


def test_reused_request_id_with_another_payload_is_already_exists(stub):
    make_pool(stub)
    o = [pb.Outcome(task_key="t1", successes=3, trials=4)]
    stub.ReportOutcomes(pb.ReportOutcomesRequest(pool="p", request_id="id", outcomes=o))
    o2 = [pb.Outcome(task_key="t1", successes=2, trials=4)]
    expect(
        Code.ALREADY_EXISTS,
        stub.ReportOutcomes,
        pb.ReportOutcomesRequest(pool="p", request_id="id", outcomes=o2),
    )


@pytest.mark.parametrize(
    "outcome, code, match",
    [
        (pb.Outcome(task_key="t1", successes=math.nan, trials=4), Code.INVALID_ARGUMENT, "finite"),
        (pb.Outcome(task_key="t1", successes=1, trials=math.inf), Code.INVALID_ARGUMENT, "finite"),
        (pb.Outcome(task_key="t1", successes=-1, trials=4), Code.INVALID_ARGUMENT, ">= 0"),
        (pb.Outcome(task_key="t1", successes=5, trials=4), Code.INVALID_ARGUMENT, "exceed"),
        (pb.Outcome(task_key="t1", successes=0, trials=0), Code.INVALID_ARGUMENT, "> 0"),
        (pb.Outcome(task_key="nope", successes=1, trials=4), Code.NOT_FOUND, "nope"),
    ],
)
def test_bad_outcomes_are_rejected_and_change_nothing(stub, outcome, code, match):
    make_pool(stub)
    before = posterior(stub)
    good = pb.Outcome(task_key="t2", successes=1, trials=4)
    req = pb.ReportOutcomesRequest(pool="p", request_id="bad", outcomes=[good, outcome])
    expect(code, stub.ReportOutcomes, req, match=match)
    assert posterior(stub) == before
    # The id was not consumed by the failed request.
    ok = stub.ReportOutcomes(pb.ReportOutcomesRequest(pool="p", request_id="bad", outcomes=[good]))
    assert not ok.duplicate


def test_empty_standalone_report_and_missing_request_id_are_invalid(stub):
    make_pool(stub)
    expect(
        Code.INVALID_ARGUMENT,
        stub.ReportOutcomes,
        pb.ReportOutcomesRequest(pool="p", request_id="e"),
    )
    o = [pb.Outcome(task_key="t1", successes=1, trials=1)]
    expect(
        Code.INVALID_ARGUMENT,
        stub.ReportOutcomes,
        pb.ReportOutcomesRequest(pool="p", outcomes=o),
        match="request_id",
    )


def test_partial_reports_add_up_and_the_selection_closes_once(stub):
    make_pool(stub, n=10)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=4, run_id="r", step=0))
    # Two ranks each report 8 of the 16 rollouts of every task.
    a = stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p",
            request_id="rank0",
            selection_id=sel.selection_id,
            outcomes=outcomes(sel, 2, 8),
        )
    )
    assert a.selection_state == pb.SELECTION_STATE_OPEN and a.steps_applied == 0
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied == 0
    b = stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p",
            request_id="rank1",
            selection_id=sel.selection_id,
            outcomes=outcomes(sel, 6, 8),
        )
    )
    assert b.selection_state == pb.SELECTION_STATE_APPLIED and b.steps_applied == 1
    post = posterior(stub)
    for t in sel.tasks:  # (1-λ)·1 + λ·1 + s = 1 + 8 successes, 1 + 8 failures
        assert post[t.key] == pytest.approx((9.0, 9.0))
    late = pb.ReportOutcomesRequest(
        pool="p", request_id="late", selection_id=sel.selection_id, outcomes=outcomes(sel, 1, 1)
    )
    expect(Code.FAILED_PRECONDITION, stub.ReportOutcomes, late, match="closed")


def test_final_report_closes_and_unreported_tasks_count_as_not_evaluated(stub):
    make_pool(stub, n=10, implicit_weight=0.0)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=3))
    first = sel.tasks[0].key
    ack = stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p",
            request_id="f",
            selection_id=sel.selection_id,
            final=True,
            outcomes=[pb.Outcome(task_key=first, successes=0, trials=16)],
        )
    )
    assert ack.selection_state == pb.SELECTION_STATE_APPLIED
    post = posterior(stub)
    assert post[first] == pytest.approx((1.0, 17.0))
    for t in sel.tasks[1:]:  # not failures: just the decay of an unselected task
        assert post[t.key] == pytest.approx((1.0, 1.0))


def test_final_report_without_outcomes_on_an_empty_selection_discards_it(stub):
    make_pool(stub)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=3))
    ack = stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p", request_id="f", selection_id=sel.selection_id, final=True
        )
    )
    assert ack.selection_state == pb.SELECTION_STATE_DISCARDED and ack.steps_applied == 0
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied == 0


def test_report_for_a_task_outside_the_selection_is_failed_precondition(stub):
    make_pool(stub, n=10)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=2))
    other = next(f"t{i}" for i in range(10) if f"t{i}" not in {t.key for t in sel.tasks})
    req = pb.ReportOutcomesRequest(
        pool="p",
        request_id="x",
        selection_id=sel.selection_id,
        outcomes=[pb.Outcome(task_key=other, successes=1, trials=2)],
    )
    expect(Code.FAILED_PRECONDITION, stub.ReportOutcomes, req, match="not part of selection")


def test_unknown_selection_id_is_not_found(stub):
    make_pool(stub)
    for sid in ("garbage", "abc-1"):
        req = pb.ReportOutcomesRequest(
            pool="p",
            request_id=sid,
            selection_id=sid,
            outcomes=[pb.Outcome(task_key="t1", successes=1, trials=2)],
        )
        expect(Code.NOT_FOUND, stub.ReportOutcomes, req)


def test_selection_expires_after_its_wait_window(stub):
    make_pool(stub, selection_wait_seconds=0.2)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=2))
    stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p",
            request_id="part",
            selection_id=sel.selection_id,
            outcomes=[pb.Outcome(task_key=sel.tasks[0].key, successes=4, trials=8)],
        )
    )
    deadline = time.monotonic() + 5
    while stub.GetPool(pb.GetPoolRequest(pool="p")).pool.open_selections:
        assert time.monotonic() < deadline, "selection never expired"
        time.sleep(0.05)
    info = stub.GetPool(pb.GetPoolRequest(pool="p")).pool
    assert (info.selections_expired, info.steps_applied) == (1, 1)


def test_concurrent_partial_reports_are_each_counted_once(stub):
    make_pool(stub, n=64)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=16, expected_trials=64))
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            for k in range(4):  # 8 ranks x 4 reports x 2 trials = 64 trials per task
                req = pb.ReportOutcomesRequest(
                    pool="p",
                    request_id=f"{r}-{k}",
                    selection_id=sel.selection_id,
                    outcomes=outcomes(sel, 1, 2),
                )
                stub.ReportOutcomes(req)
                stub.ReportOutcomes(req)  # a retry
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = stub.GetPool(pb.GetPoolRequest(pool="p")).pool
    assert (info.steps_applied, info.open_selections) == (1, 0)
    post = posterior(stub)
    for t in sel.tasks:
        assert post[t.key] == pytest.approx((33.0, 33.0))


def test_pool_stats_track_steps_etr_and_capability(stub):
    make_pool(stub, n=20)
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=4))
    outs = [
        pb.Outcome(task_key=t.key, successes=s, trials=16) for t, s in zip(sel.tasks, (0, 8, 8, 16))
    ]
    stub.ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p", request_id="r", selection_id=sel.selection_id, outcomes=outs
        )
    )
    info = stub.GetPool(pb.GetPoolRequest(pool="p")).pool
    assert info.steps_applied == 1
    assert info.last_effective_task_ratio == pytest.approx(0.5)
    assert info.rolling_effective_task_ratio == pytest.approx(0.5)
    assert math.isfinite(info.capability)
    assert info.tasks_with_references == 20


# ------------------------------------------------------- export / import


def test_export_then_import_reproduces_the_pool(stub):
    make_pool(stub, n=25)
    for step in range(3):
        sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=5, run_id="r", step=step))
        stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool="p",
                request_id=str(step),
                selection_id=sel.selection_id,
                outcomes=outcomes(sel, 3, 16),
            )
        )
    chunks = list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p", chunk_size=7)))
    assert len(chunks) == 4 and chunks[0].HasField("header") and not chunks[1].HasField("header")
    chunks[0].header.name = "copy"
    info = stub.ImportPosteriors(iter(chunks)).pool
    src = stub.GetPool(pb.GetPoolRequest(pool="p")).pool
    assert (info.task_count, info.steps_applied, info.capability) == (25, 3, src.capability)
    assert posterior(stub, "copy") == posterior(stub, "p")
    expect(Code.ALREADY_EXISTS, stub.ImportPosteriors, iter(chunks))


def test_import_with_a_broken_stream_changes_nothing(stub):
    make_pool(stub, n=10)
    chunks = list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p", chunk_size=4)))
    chunks[0].header.name = "copy"
    expect(Code.INVALID_ARGUMENT, stub.ImportPosteriors, iter(chunks[:2]), match="header says")
    expect(Code.INVALID_ARGUMENT, stub.ImportPosteriors, iter(chunks[1:]), match="header")
    bad = [pb.PosteriorChunk()]
    bad[0].CopyFrom(chunks[0])
    bad[0].tasks[0].alpha = -1.0
    expect(Code.INVALID_ARGUMENT, stub.ImportPosteriors, iter([bad[0], *chunks[1:]]), match="alpha")
    assert [p.name for p in stub.ListPools(pb.ListPoolsRequest()).pools] == ["p"]


# ------------------------------------------------ health and reflection


def test_health_is_serving_and_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for service in ("", "bots.v1.TaskSelector"):
            resp = h.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        r = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(
            r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert "bots.v1.TaskSelector" in names


def test_stop_marks_the_server_not_serving_before_draining(server):
    with grpc.insecure_channel(server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        server.health.enter_graceful_shutdown()
        resp = h.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
