"""The embedded store keeps every acknowledged change across kill -9, torn writes and restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import PoolConfig, PoolState, TaskSpec, aggregate, apply_step
from bots_server._embedded import EmbeddedStore
from bots_server._model import OutcomeIn
from grpc_health.v1 import health_pb2, health_pb2_grpc

N_TASKS = 40


def report_for(i: int) -> list[tuple[str, float, float]]:
    """The i-th standalone report of the load: 3 tasks, deterministic counts."""
    return [(f"t{(i * 7 + j) % N_TASKS}", float((i + j) % 9), 8.0) for j in range(3)]


def serial_replay(n_reports: int, config: PoolConfig) -> PoolState:
    state = PoolState("p", config)
    state.add_tasks([TaskSpec(f"t{k}") for k in range(N_TASKS)])
    for i in range(n_reports):
        apply_step(state, aggregate(state, report_for(i)))
    return state


def export(stub: selector_pb2_grpc.TaskSelectorStub) -> tuple[np.ndarray, np.ndarray]:
    alpha, beta = [], []
    for chunk in stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p")):
        for tp in chunk.tasks:
            alpha.append(tp.alpha)
            beta.append(tp.beta)
    return np.array(alpha), np.array(beta)


def send(stub, i: int, timeout: float = 5.0) -> pb.ReportOutcomesResponse:
    outs = [pb.Outcome(task_key=k, successes=s, trials=t) for k, s, t in report_for(i)]
    return stub.ReportOutcomes(
        pb.ReportOutcomesRequest(pool="p", request_id=f"req-{i}", outcomes=outs), timeout=timeout
    )


@pytest.mark.parametrize("snapshot_every", ["1000", "7"])
def test_acknowledged_reports_survive_kill_9_exactly_once(server_process, snapshot_every):
    server_process.extra = ("--snapshot-every", snapshot_every)
    server_process.start()
    config = PoolConfig(implicit_weight=0.0)
    acked: list[int] = []
    stop = threading.Event()
    with grpc.insecure_channel(server_process.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        stub.CreatePool(
            pb.CreatePoolRequest(
                name="p",
                preset="explicit_only",
                tasks=[pb.Task(key=f"t{k}") for k in range(N_TASKS)],
            )
        )

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    send(stub, i)
                except grpc.RpcError:
                    return  # the server died under us; this report may or may not be applied
                acked.append(i)
                i += 1

        worker = threading.Thread(target=load)
        worker.start()
        deadline = time.monotonic() + 20
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        server_process.kill()
        stop.set()
        worker.join(timeout=10)
    assert len(acked) >= 60

    server_process.start()
    with grpc.insecure_channel(server_process.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        # Retry everything that was sent: acknowledged ones must be duplicates.
        in_flight = len(acked)
        for i in acked:
            assert send(stub, i).duplicate, f"acknowledged report {i} was lost"
        send(stub, in_flight)  # the one cut off: applied now, or recognised as applied
        info = stub.GetPool(pb.GetPoolRequest(pool="p")).pool
        assert info.steps_applied == in_flight + 1
        alpha, beta = export(stub)
    expected = serial_replay(in_flight + 1, config)
    np.testing.assert_allclose(alpha, expected.alpha, rtol=0, atol=1e-9)
    np.testing.assert_allclose(beta, expected.beta, rtol=0, atol=1e-9)


def test_open_selection_and_partial_evidence_survive_a_restart(server_process):
    server_process.start()
    with grpc.insecure_channel(server_process.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        stub.CreatePool(
            pb.CreatePoolRequest(name="p", tasks=[pb.Task(key=f"t{k}") for k in range(10)])
        )
        sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=3, run_id="r", step=5))
        first = [pb.Outcome(task_key=t.key, successes=2, trials=8) for t in sel.tasks]
        stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool="p", request_id="a", selection_id=sel.selection_id, outcomes=first
            )
        )
    server_process.kill()
    server_process.start()
    with grpc.insecure_channel(server_process.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        again = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=3, run_id="r", step=5))
        assert again.replayed and again.selection_id == sel.selection_id
        assert [t.key for t in again.tasks] == [t.key for t in sel.tasks]
        second = [pb.Outcome(task_key=t.key, successes=6, trials=8) for t in sel.tasks]
        ack = stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool="p", request_id="b", selection_id=sel.selection_id, outcomes=second
            )
        )
        assert ack.selection_state == pb.SELECTION_STATE_APPLIED
        alpha, beta = export(stub)
    picked = [t.index for t in sel.tasks]
    np.testing.assert_allclose(alpha[picked], 9.0)
    np.testing.assert_allclose(beta[picked], 9.0)


def test_sigterm_drains_and_exits_cleanly(server_process):
    server_process.extra = ("--grace-seconds", "2")
    server_process.start()
    with grpc.insecure_channel(server_process.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        assert (
            h.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    assert server_process.terminate() == 0


def test_a_torn_journal_tail_is_cut_off_on_start(tmp_path: Path):
    store = EmbeddedStore(tmp_path, snapshot_every=10_000)
    store.create_pool("p", PoolConfig(), [TaskSpec(f"t{k}") for k in range(5)])
    store.report("p", "r1", "", [OutcomeIn("t1", 1.0, 2.0)], False)
    store.close()
    # close() snapshotted; add a record after it, then a torn half-record.
    store = EmbeddedStore(tmp_path, snapshot_every=10_000)
    store.report("p", "r2", "", [OutcomeIn("t2", 1.0, 2.0)], False)
    journal = store._pools["p"].journal.path
    store._pools["p"].journal.close()  # simulate a crash: no snapshot at close
    store._pools.clear()
    store.close()
    size = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(b"BJR1\x40\x00\x00\x00garbage")
    store = EmbeddedStore(tmp_path)
    info = store.get_pool("p")
    assert info.steps_applied == 2
    assert journal.stat().st_size == size
    assert store.report("p", "r2", "", [OutcomeIn("t2", 1.0, 2.0)], False).duplicate
    store.close()


def test_a_second_server_cannot_use_the_same_data_dir(tmp_path: Path):
    store = EmbeddedStore(tmp_path)
    with pytest.raises(RuntimeError, match="in use"):
        EmbeddedStore(tmp_path)
    store.close()
