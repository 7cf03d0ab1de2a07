"""Where selections come from: the engine in-process, or a BOTS server over gRPC.

Both backends follow the server's conventions exactly (selection number =
selections opened so far; evidence sorted by task index), so the same seed
gives the same selections either way.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Protocol

import grpc
import numpy as np
import numpy.typing as npt
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import (
    EstimatorKind,
    Evidence,
    PoolConfig,
    PoolState,
    SelectionMode,
    TaskSpec,
    apply_step,
)
from bots_core import select_batch as engine_select
from bots_core._similarity import estimator_for

from bots_eval._learner import World

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

RPC_TIMEOUT_S = 60.0
_ADD_CHUNK = 10_000


class PoolBackend(Protocol):
    """One pool a simulated trainer selects from and reports to."""

    def select(self, batch_size: int, run: str = "") -> IntArray:
        """Opens a selection for ``run`` and returns its task indices."""
        ...

    def report(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """Reports the outcomes of ``run``'s open selection and closes it (one update)."""
        ...

    def report_standalone(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """Reports outcomes of tasks chosen outside the engine as a step of ``run``."""
        ...

    def capability(self) -> float:
        """The pool's current mu~ (NaN before the first update)."""
        ...

    def close(self) -> None:
        """Releases the pool."""
        ...


class EngineBackend:
    """A :class:`bots_core.PoolState` driven in-process, as the server would drive it.

    The pool's ``estimator`` setting chooses the implicit-evidence plug-in;
    similarity uses the world's neighbour graph (docs/similarity.md).

    Args:
        name: Pool name.
        config: Pool config.
        world: Tasks to register (with their reference pass rates).
    """

    def __init__(self, name: str, config: PoolConfig, world: World) -> None:
        self.state = PoolState(name, config)
        self.estimator = estimator_for(config, world.graph)
        specs = [
            TaskSpec(k, float(w), float(g))
            for k, w, g in zip(world.keys(), world.weak, world.strong, strict=True)
        ]
        self.state.add_tasks(specs)

    def select(self, batch_size: int, run: str = "") -> IntArray:
        """See :class:`PoolBackend`."""
        st = self.state
        sel = engine_select(st, batch_size, st.selections_opened, run=run)
        st.selections_opened += 1
        return sel.indices

    def report(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """See :class:`PoolBackend`."""
        order = np.argsort(indices, kind="stable")
        ev = Evidence(indices[order], successes[order], trials[order])
        if self.estimator is None:
            apply_step(self.state, ev, run=run)
        else:
            apply_step(self.state, ev, self.estimator, run=run)

    def report_standalone(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """See :class:`PoolBackend`."""
        self.report(indices, successes, trials, run)

    def capability(self) -> float:
        """See :class:`PoolBackend`."""
        return self.state.capability

    def close(self) -> None:
        """Nothing to release."""


_ESTIMATOR_TO_PB = {
    EstimatorKind.INTERPOLATION: pb.ESTIMATOR_KIND_INTERPOLATION,
    EstimatorKind.SIMILARITY: pb.ESTIMATOR_KIND_SIMILARITY,
    EstimatorKind.BOTH: pb.ESTIMATOR_KIND_BOTH,
}
_MODE_TO_PB = {
    SelectionMode.THOMPSON: pb.SELECTION_MODE_THOMPSON,
    SelectionMode.GREEDY: pb.SELECTION_MODE_GREEDY,
    SelectionMode.SOFTMAX: pb.SELECTION_MODE_SOFTMAX,
    SelectionMode.UNIFORM: pb.SELECTION_MODE_UNIFORM,
}


def config_message(config: PoolConfig) -> pb.PoolConfig:
    """The wire form of a pool config, every field set."""
    return pb.PoolConfig(
        forgetting=config.forgetting,
        implicit_weight=config.implicit_weight,
        pseudo_rollouts=config.pseudo_rollouts,
        target=config.target,
        momentum=config.momentum,
        mode=_MODE_TO_PB[config.mode],
        temperature=config.temperature,
        seed=config.seed,
        selection_wait_seconds=config.selection_wait_seconds,
        min_reference_gap=config.min_reference_gap,
        estimator=_ESTIMATOR_TO_PB[config.estimator],
    )


class GrpcBackend:
    """A pool on a BOTS server, driven through the raw generated stub.

    The pool gets a fresh unique name and is deleted by :meth:`close`.

    Args:
        channel: An open channel to the server.
        name: Prefix of the pool name.
        config: Pool config.
        world: Tasks to register.
    """

    def __init__(self, channel: grpc.Channel, name: str, config: PoolConfig, world: World) -> None:
        self.stub = selector_pb2_grpc.TaskSelectorStub(channel)  # type: ignore[no-untyped-call]
        # Pool names allow [A-Za-z0-9._-] only; the suffix keeps reruns apart.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
        self.pool = f"{safe}-{uuid.uuid4().hex[:12]}"
        self._keys = world.keys()
        # Per run id: the next step number and the open selection. Trainers that
        # share a run id take turns, so they share its step counter.
        self._steps: dict[str, int] = {}
        self._open: dict[str, str] = {}
        self.stub.CreatePool(
            pb.CreatePoolRequest(name=self.pool, config=config_message(config)),
            timeout=RPC_TIMEOUT_S,
        )
        tasks = [
            pb.Task(key=k, weak=float(w), strong=float(g))
            for k, w, g in zip(self._keys, world.weak, world.strong, strict=True)
        ]
        for lo in range(0, len(tasks), _ADD_CHUNK):
            self.stub.AddTasks(
                pb.AddTasksRequest(pool=self.pool, tasks=tasks[lo : lo + _ADD_CHUNK]),
                timeout=RPC_TIMEOUT_S,
            )

    def _run_id(self, run: str) -> str:
        # A selection without a run id is never deduplicated; the pool name
        # stands in for the one anonymous trainer of a pool. The engine treats a
        # single run the same whatever its name.
        return run or self.pool

    def select(self, batch_size: int, run: str = "") -> IntArray:
        """See :class:`PoolBackend`."""
        run_id = self._run_id(run)
        resp = self.stub.SelectBatch(
            pb.SelectBatchRequest(
                pool=self.pool,
                batch_size=batch_size,
                run_id=run_id,
                step=self._steps.get(run_id, 0),
            ),
            timeout=RPC_TIMEOUT_S,
        )
        self._open[run_id] = resp.selection_id
        return np.fromiter((t.index for t in resp.tasks), dtype=np.int64, count=len(resp.tasks))

    def _send(
        self,
        selection_id: str,
        run: str,
        indices: IntArray,
        successes: FloatArray,
        trials: FloatArray,
    ) -> None:
        run_id = self._run_id(run)
        step = self._steps.get(run_id, 0)
        outcomes = [
            pb.Outcome(task_key=self._keys[int(i)], successes=float(s), trials=float(t))
            for i, s, t in zip(indices, successes, trials, strict=True)
        ]
        self.stub.ReportOutcomes(
            pb.ReportOutcomesRequest(
                pool=self.pool,
                request_id=f"{self.pool}-{run}-r{step}" if run else f"{self.pool}-r{step}",
                selection_id=selection_id,
                outcomes=outcomes,
                final=bool(selection_id),
                # A report naming a selection belongs to that selection's run.
                run_id="" if selection_id else run,
            ),
            timeout=RPC_TIMEOUT_S,
        )
        self._steps[run_id] = step + 1

    def report(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """See :class:`PoolBackend`."""
        sid = self._open.pop(self._run_id(run), "")
        if not sid:
            raise RuntimeError(f"report() without an open selection of run {run!r}")
        self._send(sid, run, indices, successes, trials)

    def report_standalone(
        self, indices: IntArray, successes: FloatArray, trials: FloatArray, run: str = ""
    ) -> None:
        """See :class:`PoolBackend`."""
        self._send("", run, indices, successes, trials)

    def capability(self) -> float:
        """See :class:`PoolBackend`."""
        info = self.stub.GetPool(pb.GetPoolRequest(pool=self.pool), timeout=RPC_TIMEOUT_S)
        value = float(info.pool.capability)
        return value if math.isfinite(value) else math.nan

    def close(self) -> None:
        """Deletes the pool from the server."""
        self.stub.DeletePool(pb.DeletePoolRequest(pool=self.pool), timeout=RPC_TIMEOUT_S)
