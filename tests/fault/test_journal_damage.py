"""The embedded store never drops acknowledged data silently: disk full, failed fsync,
flipped bits, bad snapshots, and the explicit recovery command."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import PoolConfig, PoolState, TaskSpec, aggregate, apply_step
from bots_server import _journal
from bots_server._journal import Journal, read_segments, segments
from service_procs import ServerProcess, free_port

N_TASKS = 20
CONFIG = PoolConfig(implicit_weight=0.0)


def outcomes(i: int) -> list[tuple[str, float, float]]:
    return [(f"t{(i * 3 + j) % N_TASKS}", float((i + j) % 5), 4.0) for j in range(2)]


def request(pool: str, i: int) -> pb.ReportOutcomesRequest:
    outs = [pb.Outcome(task_key=k, successes=s, trials=t) for k, s, t in outcomes(i)]
    return pb.ReportOutcomesRequest(pool=pool, request_id=f"req-{i}", outcomes=outs)


def replay(indices: list[int]) -> PoolState:
    state = PoolState("p", CONFIG)
    state.add_tasks([TaskSpec(f"t{k}") for k in range(N_TASKS)])
    for i in indices:
        apply_step(state, aggregate(state, outcomes(i)))
    return state


def create(stub: selector_pb2_grpc.TaskSelectorStub, name: str) -> None:
    stub.CreatePool(
        pb.CreatePoolRequest(
            name=name,
            config=pb.PoolConfig(implicit_weight=0.0),
            tasks=[pb.Task(key=f"t{k}") for k in range(N_TASKS)],
        )
    )


def posteriors(stub: selector_pb2_grpc.TaskSelectorStub, pool: str) -> np.ndarray:
    rows = [
        (tp.alpha, tp.beta)
        for chunk in stub.ExportPosteriors(pb.ExportPosteriorsRequest(pool=pool))
        for tp in chunk.tasks
    ]
    return np.array(rows)


def pool_dir(server: ServerProcess, pool: str) -> Path:
    return server.data_dir / "pools" / pool


def test_disk_full_answers_an_error_loses_nothing_and_recovers(server_process):
    """A file-size limit on the server process makes journal writes fail midway (a short
    write, then EFBIG), as a full disk does; raising it is space coming back."""
    server = server_process.start()
    acked: list[int] = []
    refused: list[int] = []
    with grpc.insecure_channel(server.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        create(stub, "p")
        stub.ReportOutcomes(request("p", 0))
        acked.append(0)
        (_, segment), *_ = segments(pool_dir(server, "p"))
        frame = segment.stat().st_size  # the segment holds one report frame
        limit = 2 * frame + frame // 2  # room for one more; the next write is cut short
        soft, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
        for i in range(1, 12):
            try:
                stub.ReportOutcomes(request("p", i), timeout=10)
                acked.append(i)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert "nothing was applied" in err.details()
                refused.append(i)
        assert acked == [0, 1] and refused == list(range(2, 12))
        # The short write of record 3 and the refused ones after it were cut back:
        # the segment holds exactly the acknowledged frames, no torn one in between.
        records, damage = read_segments(pool_dir(server, "p"))
        assert damage is None and [seq for seq, _ in records] == [1, 2]
        assert segment.stat().st_size == sum(len(_journal.frame(q, p)) for q, p in records)
        assert stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied == len(acked)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space is back
        for i in refused:  # the client's retries, same request ids
            assert not stub.ReportOutcomes(request("p", i)).duplicate
            acked.append(i)
    server.kill()
    server.start()
    with grpc.insecure_channel(server.address) as ch:
        stub = selector_pb2_grpc.TaskSelectorStub(ch)
        for i in acked:
            assert stub.ReportOutcomes(request("p", i)).duplicate
        expected = replay(acked)
        got = posteriors(stub, "p")
        np.testing.assert_allclose(got[:, 0], expected.alpha, rtol=1e-12)
        np.testing.assert_allclose(got[:, 1], expected.beta, rtol=1e-12)


def test_a_failed_fsync_cuts_the_refused_record_back(tmp_path: Path, monkeypatch):
    """fdatasync failing (EIO) leaves the file as it was; the sequence number is reused."""
    journal = Journal(tmp_path, 1)
    journal.append(1, b"first")
    real = os.fdatasync
    calls = {"n": 0}

    def failing_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(_journal.os, "fdatasync", failing_once)
    with pytest.raises(OSError, match="Input/output"):
        journal.append(2, b"refused")
    journal.append(2, b"second")
    journal.close()
    records, damage = read_segments(tmp_path)
    assert damage is None
    assert records == [(1, b"first"), (2, b"second")]


def flip_a_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bots_server", *args], capture_output=True, text=True, timeout=60
    )


def test_a_flipped_bit_mid_journal_stops_only_that_pool_until_recovered(tmp_path: Path):
    server = ServerProcess(tmp_path / "data", free_port(), "--snapshot-every", "100000").start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            create(stub, "p")
            create(stub, "q")
            for i in range(10):
                stub.ReportOutcomes(request("p", i))
        server.kill()
        (_, segment), *_ = segments(pool_dir(server, "p"))
        size = segment.stat().st_size
        flip_a_bit(segment, size // 2)
        damaged = segment.read_bytes()
        server.start()
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetPool(pb.GetPoolRequest(pool="p"))
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            assert str(segment) in info.value.details()
            assert "at byte" in info.value.details()
            assert "bots recover" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.ReportOutcomes(request("p", 99))
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            # The other pool serves, and the damaged journal was not "repaired".
            stub.ReportOutcomes(request("q", 0))
            assert [p.name for p in stub.ListPools(pb.ListPoolsRequest()).pools] == ["q"]
        assert segment.stat().st_size == size
        server.terminate()

        done = run_cli("recover", "p", "--data-dir", str(server.data_dir), "--json")
        assert done.returncode == 0, done.stderr
        assert "dropping everything after" in done.stderr  # logged loudly
        assert "continuing from snapshot.bin" in done.stderr
        server.start()
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            steps = stub.GetPool(pb.GetPoolRequest(pool="p")).pool.steps_applied
            assert 0 < steps < 10  # the records before the damage
            expected = replay(list(range(steps)))
            np.testing.assert_allclose(posteriors(stub, "p")[:, 0], expected.alpha, rtol=1e-12)
            stub.ReportOutcomes(request("p", 50))  # and it takes changes again
        kept = list(pool_dir(server, "p").glob("damaged-*/journal-*.log"))
        assert len(kept) == 1
        assert kept[0].read_bytes() == damaged  # kept for a post-mortem, not deleted
    finally:
        server.stop()


def test_a_bad_snapshot_stops_only_its_pool_and_recovery_uses_the_previous_one(tmp_path: Path):
    server = ServerProcess(tmp_path / "data", free_port(), "--snapshot-every", "3").start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            create(stub, "p")
            create(stub, "q")
            for i in range(10):
                stub.ReportOutcomes(request("p", i))
                stub.GetPool(pb.GetPoolRequest(pool="p"))  # applies the step: snapshots go ahead
        server.kill()
        snapshot = pool_dir(server, "p") / "snapshot.bin"
        assert (pool_dir(server, "p") / "snapshot.prev.bin").exists()
        flip_a_bit(snapshot, snapshot.stat().st_size - 5)
        server.start()
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetPool(pb.GetPoolRequest(pool="p"))
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            assert str(snapshot) in info.value.details()
            assert "checksum" in info.value.details()
            assert stub.GetPool(pb.GetPoolRequest(pool="q")).pool.task_count == N_TASKS
        server.terminate()
        done = run_cli("recover", "p", "--data-dir", str(server.data_dir))
        assert done.returncode == 0, done.stderr
        assert "snapshot.bin is unusable" in done.stderr
        server.start()
        with grpc.insecure_channel(server.address) as ch:
            stub = selector_pb2_grpc.TaskSelectorStub(ch)
            # The previous snapshot plus the journal kept since it hold every report.
            for i in range(10):
                assert stub.ReportOutcomes(request("p", i)).duplicate
            expected = replay(list(range(10)))
            np.testing.assert_allclose(posteriors(stub, "p")[:, 1], expected.beta, rtol=1e-12)
    finally:
        server.stop()
