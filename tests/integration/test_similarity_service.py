"""The similarity estimator in the service: embeddings over gRPC, both stores, replicas, restarts.

Every test talks to a real gRPC server on a real port; the Redis ones to a
real redis-server. Posteriors are compared bit for bit with the same steps
applied in process by ``bots_core``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc as pb_grpc
from bots_core import (
    EmbeddingBasis,
    Evidence,
    PoolEstimator,
    PoolState,
    apply_step,
    estimator_at,
    preset,
)
from bots_server._app import RunningServer, start_server
from bots_server._pool import Retention
from bots_server._settings import ServerSettings
from bots_server._snapshot import decode as decode_image
from service_procs import RedisProcess

DIM = 12


def vectors(n: int, seed: int) -> np.ndarray:
    """Embeddings in families of four (centroid plus noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 4 + 1, DIM))
    return (centres[np.arange(n) // 4] + 0.3 * rng.normal(size=(n, DIM))).astype(np.float32)


def tasks(keys: list[str], rows: np.ndarray, refs: bool) -> list[pb.Task]:
    out = []
    for i, (k, row) in enumerate(zip(keys, rows, strict=True)):
        t = pb.Task(key=k, embedding=row.tolist())
        if refs:
            t.weak, t.strong = 0.1 + 0.01 * (i % 30), 0.5 + 0.01 * (i % 30)
        out.append(t)
    return out


def successes(key: str) -> float:
    return float(int(key[1:]) * 7 % 17)


class Replay:
    """The same pool driven in process: the engine calls the service makes."""

    def __init__(self, name: str, keys: list[str], rows: np.ndarray, refs: bool) -> None:
        self.state = PoolState("p", preset(name))
        self.refs = refs
        self.basis = EmbeddingBasis.fit(rows)
        self.state.embedding_basis = self.basis
        self.est: PoolEstimator | None = None
        self.add(keys, rows)

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        msgs = tasks(keys, rows, self.refs)
        n = len(keys)
        weak = np.array([t.weak if t.HasField("weak") else math.nan for t in msgs])
        strong = np.array([t.strong if t.HasField("strong") else math.nan for t in msgs])
        self.state.extend_columns(
            keys, weak, strong, np.ones(n), np.ones(n), self.basis.codes(rows)
        )

    def step(self, indices: list[int], keys: list[str]) -> None:
        order = np.argsort(indices)
        idx = np.asarray(indices, dtype=np.int64)[order]
        s = np.array([successes(keys[i]) for i in idx])
        self.est = estimator_at(self.state, self.est)
        apply_step(self.state, Evidence(idx, s, np.full(len(idx), 16.0)), self.est)


def select_and_report(stub: pb_grpc.TaskSelectorStub, step: int, report_to=None) -> list[int]:
    sel = stub.SelectBatch(pb.SelectBatchRequest(pool="p", batch_size=6, run_id="r", step=step))
    outcomes = [
        pb.Outcome(task_key=t.key, successes=successes(t.key), trials=16) for t in sel.tasks
    ]
    (report_to or stub).ReportOutcomes(
        pb.ReportOutcomesRequest(
            pool="p",
            request_id=f"q{step}",
            selection_id=sel.selection_id,
            outcomes=outcomes,
            final=True,
        )
    )
    return [t.index for t in sel.tasks]


def posteriors(stub: pb_grpc.TaskSelectorStub) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p")))
    alpha = np.array([t.alpha for c in chunks for t in c.tasks])
    beta = np.array([t.beta for c in chunks for t in c.tasks])
    return alpha, beta


def assert_same(stub: pb_grpc.TaskSelectorStub, replay: Replay) -> None:
    alpha, beta = posteriors(stub)
    np.testing.assert_array_equal(alpha, replay.state.alpha)
    np.testing.assert_array_equal(beta, replay.state.beta)


def start(tmp_path: Path, redis_url: str = "") -> RunningServer:
    return start_server(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            data_dir=str(tmp_path / "data"),
            redis_url=redis_url,
            checkpoint_every=3,
            snapshot_every=3,
        )
    )


def continue_on(server: RunningServer, replay: Replay, steps: range) -> None:
    """Takes ``steps`` on ``server`` and in ``replay``, compares, and stops the server."""
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.TaskSelectorStub(ch)
            for step in steps:
                replay.step(select_and_report(stub, step), KEYS)
            assert_same(stub, replay)
    finally:
        server.stop(grace=0)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


KEYS = [f"t{i}" for i in range(48)]
ROWS = vectors(48, seed=3)


@pytest.mark.parametrize(("name", "refs"), [("similarity", False), ("bots+similarity", True)])
def test_a_pool_with_embeddings_steps_exactly_as_the_engine(stub, name, refs):
    reply = stub.CreatePool(
        pb.CreatePoolRequest(name="p", preset=name, tasks=tasks(KEYS[:40], ROWS[:40], refs))
    )
    assert reply.created and reply.tasks_added == 40
    replay = Replay(name, KEYS[:40], ROWS[:40], refs)
    for step in range(10):
        if step == 4:  # tasks added mid-run join the graph at the next step
            stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=tasks(KEYS[40:], ROWS[40:], refs)))
            replay.add(KEYS[40:], ROWS[40:])
        replay.step(select_and_report(stub, step), KEYS)
    assert_same(stub, replay)
    assert replay.est is not None and replay.est.to_state().tasks == 48
    # The export carries the stored embeddings: codes times the pool's scale.
    exported = [
        t.task for c in stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p")) for t in c.tasks
    ]
    codes = replay.state.embedding_codes
    assert codes is not None
    np.testing.assert_array_equal(
        np.array([t.embedding for t in exported], dtype=np.float32),
        codes.astype(np.float32) * np.float32(replay.basis.scale),
    )


def test_embedded_pool_restarts_from_its_snapshot_and_continues_identically(tmp_path):
    server = start(tmp_path)
    replay = Replay("similarity", KEYS, ROWS, False)
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.TaskSelectorStub(ch)
            stub.CreatePool(
                pb.CreatePoolRequest(name="p", preset="similarity", tasks=tasks(KEYS, ROWS, False))
            )
            for step in range(6):
                replay.step(select_and_report(stub, step), KEYS)
            posteriors(stub)  # applies the pending steps
    finally:
        server.stop(grace=0)
    image = decode_image((tmp_path / "data/pools/p/snapshot.bin").read_bytes(), Retention())
    assert image.estimator_saved is not None and image.estimator_saved.observed
    continue_on(start(tmp_path), replay, range(6, 12))


def test_redis_replicas_agree_and_a_new_one_continues_from_the_checkpoint(tmp_path, redis_proc):
    a, b = start(tmp_path / "a", redis_proc.url), start(tmp_path / "b", redis_proc.url)
    replay = Replay("bots+similarity", KEYS, ROWS, True)
    try:
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
            sa, sb = pb_grpc.TaskSelectorStub(ca), pb_grpc.TaskSelectorStub(cb)
            sa.CreatePool(
                pb.CreatePoolRequest(
                    name="p", preset="bots+similarity", tasks=tasks(KEYS, ROWS, True)
                )
            )
            for step in range(8):  # drawn on one replica, reported on the other, in turn
                first, second = (sa, sb) if step % 2 else (sb, sa)
                replay.step(select_and_report(first, step, report_to=second), KEYS)
            assert_same(sa, replay)
            assert_same(sb, replay)
    finally:
        a.stop(grace=0)
        b.stop(grace=0)
    # A fresh replica loads the checkpoint image, then the log after it.
    continue_on(start(tmp_path / "c", redis_proc.url), replay, range(8, 12))


def _add(stub: pb_grpc.TaskSelectorStub, msgs: list[pb.Task], create: bool) -> None:
    if create:
        stub.CreatePool(pb.CreatePoolRequest(name="p", preset="similarity", tasks=msgs))
    else:
        stub.AddTasks(pb.AddTasksRequest(pool="p", tasks=msgs))


BAD = {
    "ragged dimensions": ([[1.0, 2.0], [1.0, 2.0, 3.0]], "one dimension"),
    "a NaN": ([[1.0, math.nan], [1.0, 2.0]], "finite"),
    "a task without one": ([[1.0, 2.0], []], "all or none"),
    "too many dimensions": ([[0.5] * 1025, [0.5] * 1025], "at most 1024"),
}


@pytest.mark.parametrize("create", [True, False], ids=["CreatePool", "AddTasks"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_embeddings_are_invalid_and_change_nothing(stub, case, create):
    rows, words = BAD[case]
    if not create:
        _add(stub, tasks(KEYS[:8], ROWS[:8], False), create=True)
    msgs = [pb.Task(key=f"x{i}", embedding=r) for i, r in enumerate(rows)]
    with pytest.raises(grpc.RpcError) as err:
        _add(stub, msgs, create)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()
    if create:
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetPool(pb.GetPoolRequest(pool="p"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    else:
        assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.task_count == 8


def test_tasks_that_do_not_fit_the_pools_embeddings_are_refused(stub):
    _add(stub, tasks(KEYS[:8], ROWS[:8], False), create=True)
    cases = [
        ([pb.Task(key="y")], "needs task embeddings"),
        ([pb.Task(key="y", embedding=[1.0, 2.0])], f"dimension {DIM}"),
    ]
    for msgs, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            _add(stub, msgs, create=False)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in err.value.details()
    plain = "q"
    stub.CreatePool(pb.CreatePoolRequest(name=plain, tasks=[pb.Task(key="a")]))
    with pytest.raises(grpc.RpcError) as err:
        stub.AddTasks(pb.AddTasksRequest(pool=plain, tasks=[pb.Task(key="b", embedding=[1.0])]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "all or none" in err.value.details()
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.task_count == 8


def test_an_exported_similarity_pool_imports_with_the_same_codes(stub):
    _add(stub, tasks(KEYS, ROWS, False), create=True)
    for step in range(3):
        select_and_report(stub, step)
    chunks = list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="p", chunk_size=10)))
    chunks[0].header.name = "copy"
    stub.ImportPosteriors(iter(chunks))
    again = list(stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool="copy", chunk_size=10)))
    assert [t.task.embedding for c in again for t in c.tasks] == [
        t.task.embedding for c in chunks for t in c.tasks
    ]
    stub.SelectBatch(pb.SelectBatchRequest(pool="copy", batch_size=4))
    without = [pb.PosteriorChunk(header=chunks[0].header)]
    without[0].header.name = "bare"
    without[0].header.task_count = 1
    without.append(
        pb.PosteriorChunk(tasks=[pb.TaskPosterior(task=pb.Task(key="a"), alpha=1, beta=1)])
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.ImportPosteriors(iter(without))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs task embeddings" in err.value.details()


def test_a_pool_too_large_for_the_exact_search_is_refused_without_faiss(stub, monkeypatch):
    import sys

    import bots_core._pool_estimator as pe

    monkeypatch.setattr(pe, "EXACT_LIMIT", 20)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails
    with pytest.raises(grpc.RpcError) as err:
        _add(stub, tasks(KEYS[:30], ROWS[:30], False), create=True)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs faiss" in err.value.details()
    _add(stub, tasks(KEYS[:20], ROWS[:20], False), create=True)
    with pytest.raises(grpc.RpcError) as err:
        _add(stub, tasks(KEYS[20:], ROWS[20:], False), create=False)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.task_count == 20


def test_a_retried_add_must_carry_the_embeddings_the_pool_has(stub):
    """Re-sending known keys is a retry when their embeddings match; another embedding conflicts."""
    _add(stub, tasks(KEYS[:8], ROWS[:8], False), create=True)
    _add(stub, tasks(KEYS[:8], ROWS[:8], False), create=False)  # the same request again
    moved = ROWS[:8].copy()
    moved[3] += 5.0
    with pytest.raises(grpc.RpcError) as err:
        _add(stub, tasks(KEYS[:8], moved, False), create=False)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "different embedding" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # new and known keys together: nothing is added
        _add(stub, tasks([*KEYS[:8], "z"], np.vstack([moved, ROWS[8:9]]), False), create=False)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        _add(stub, [pb.Task(key=KEYS[0], embedding=[1.0, 2.0])], create=False)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.task_count == 8
