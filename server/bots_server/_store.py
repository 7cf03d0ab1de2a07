"""The store interface every backend implements (embedded and Redis), and pool dumps."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core import (
    MAX_KEY_BYTES,
    EmbeddingBasis,
    InvalidInputError,
    PoolConfig,
    PoolState,
    TaskSpec,
    check_graph_size,
    needs_estimator,
)

from bots_server._errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from bots_server._model import OutcomeIn, PoolHeaderView, PoolStats, ReportAck, SelectionView
from bots_server._pool import check_pool_name

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PoolDump:
    """A consistent copy of a pool's tasks and posteriors, for export and import."""

    header: PoolHeaderView
    keys: list[str]
    weak: FloatArray
    strong: FloatArray
    prior_alpha: FloatArray
    prior_beta: FloatArray
    alpha: FloatArray
    beta: FloatArray
    # Stored embeddings (codes times the pool's scale), None for a pool without them.
    embedding: F32Array | None = None

    @classmethod
    def of_state(cls, st: PoolState, selections_opened: int) -> PoolDump:
        """A copy of ``st`` (arrays copied, so the pool may change afterwards)."""
        header = PoolHeaderView(
            st.name, st.config, st.task_count, st.steps_applied, st.capability, selections_opened
        )
        codes, basis = st.embedding_codes, st.embedding_basis
        emb = None
        if codes is not None and basis is not None:
            emb = codes.astype(np.float32) * np.float32(basis.scale)
        return cls(
            header, list(st.keys), st.weak.copy(), st.strong.copy(), st.alpha0.copy(),
            st.beta0.copy(), st.alpha.copy(), st.beta.copy(), emb,
        )  # fmt: skip

    def to_state(self, max_tasks: int) -> PoolState:
        """Builds and validates an engine state from exported arrays."""
        h = self.header
        check_pool_name(h.name)
        n = len(self.keys)
        if n > max_tasks:
            raise ResourceExhausted(f"import of {n} tasks exceeds the limit of {max_tasks}")
        arrays = [self.weak, self.strong, self.prior_alpha, self.prior_beta, self.alpha, self.beta]
        if any(len(a) != n for a in arrays):
            raise InvalidArgument("import arrays differ in length")
        state = self._fast_state() or self._checked_state()
        if state.task_count != n:
            raise InvalidArgument("import holds a task key twice")
        for label, arr in (("alpha", self.alpha), ("beta", self.beta)):
            if n and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
                raise InvalidArgument(f"import has a non-finite or non-positive {label}")
        self._embed(state)
        state.alpha = np.array(self.alpha, dtype=np.float64)
        state.beta = np.array(self.beta, dtype=np.float64)
        if not (math.isnan(h.capability) or math.isfinite(h.capability)):
            raise InvalidArgument("import capability must be finite or NaN")
        state.capability = h.capability
        state.steps_applied = h.steps_applied
        state.selections_opened = h.selections_opened
        return state

    def _embed(self, state: PoolState) -> None:
        """Gives ``state`` the dump's embeddings, reduced as a new pool's would be.

        Exported embeddings are already reduced (at most 32 wide), so the
        import keeps them as they are and finds the same int8 codes.
        """
        emb = self.embedding
        if emb is None:
            if needs_estimator(state.config):
                raise FailedPrecondition(
                    f"estimator {state.config.estimator.value!r} needs task embeddings, and "
                    "this import has none"
                )
            return
        if emb.shape[0] != state.task_count:
            raise InvalidArgument("import embeddings and tasks differ in number")
        if needs_estimator(state.config):
            try:
                check_graph_size(state.task_count)
            except InvalidInputError as exc:
                raise FailedPrecondition(str(exc)) from None
        basis = EmbeddingBasis.fit(emb)
        state.set_embeddings(basis, basis.codes(emb))

    def _fast_state(self) -> PoolState | None:
        """The state from whole columns when every task is valid (vectorised checks), else None."""
        keys, n = self.keys, len(self.keys)
        cols = [np.asarray(a, dtype=np.float64) for a in (self.weak, self.strong)]
        priors = [np.asarray(a, dtype=np.float64) for a in (self.prior_alpha, self.prior_beta)]
        try:
            joined = "".join(keys)
            lengths = list(map(len, keys)) if joined.isascii() else [len(k.encode()) for k in keys]
        except (TypeError, UnicodeEncodeError):
            return None
        if n and not (min(lengths) >= 1 and max(lengths) <= MAX_KEY_BYTES):
            return None
        has_w, has_g = ~np.isnan(cols[0]), ~np.isnan(cols[1])
        if not np.array_equal(has_w, has_g):
            return None
        for c in cols:
            if not np.all((c[has_w] >= 0.0) & (c[has_w] <= 1.0)):
                return None
        for p in priors:
            if not np.all((p > 0.0) & (p <= 1e9)):  # NaN and inf fail too
                return None
        h = self.header
        (weak, strong), (prior_a, prior_b) = cols, priors
        state = PoolState.from_columns(h.name, h.config, keys, weak, strong, prior_a, prior_b)
        if state.index.duplicates():
            return None  # a key twice: the checked path says which
        return state

    def _checked_state(self) -> PoolState:
        """The state task by task (the first invalid task raises its own error)."""
        state = PoolState(self.header.name, self.header.config)
        state.add_tasks(
            [
                TaskSpec(k, float(w), float(g), float(a0), float(b0))
                for k, w, g, a0, b0 in zip(
                    self.keys, self.weak, self.strong, self.prior_alpha, self.prior_beta
                )
            ]
        )
        return state


class Store(abc.ABC):
    """Where pools live. Every method is thread-safe and atomic.

    Errors are ``bots_server._errors.ServiceError`` or ``bots_core`` errors.
    """

    @abc.abstractmethod
    def create_pool(
        self,
        name: str,
        config: PoolConfig,
        tasks: Sequence[TaskSpec],
        embeddings: F32Array | None = None,
    ) -> tuple[PoolStats, bool, int]:
        """Creates a pool; returns (stats, created, tasks added).

        ``embeddings``: one validated row per spec (``bots_core.check_embeddings``), or None.
        """

    @abc.abstractmethod
    def add_tasks(
        self, name: str, tasks: Sequence[TaskSpec], embeddings: F32Array | None = None
    ) -> tuple[int, int]:
        """Adds tasks; returns (added, task count)."""

    @abc.abstractmethod
    def get_pool(self, name: str) -> PoolStats: ...

    @abc.abstractmethod
    def list_pools(self) -> list[PoolStats]: ...

    @abc.abstractmethod
    def delete_pool(self, name: str) -> None: ...

    @abc.abstractmethod
    def select(
        self,
        name: str,
        batch_size: int,
        run_id: str,
        step: int,
        expected_trials: float,
        wait_seconds: float = 0.0,
    ) -> SelectionView:
        """Opens (or replays) a selection; ``wait_seconds`` 0 = the pool's wait window."""

    @abc.abstractmethod
    def report(
        self,
        name: str,
        request_id: str,
        selection_id: str,
        outcomes: Sequence[OutcomeIn],
        final: bool,
        run_id: str = "",
    ) -> ReportAck:
        """Adds evidence; ``run_id`` names the run of a standalone step."""

    @abc.abstractmethod
    def export_pool(self, name: str) -> PoolDump: ...

    @abc.abstractmethod
    def import_pool(self, dump: PoolDump) -> PoolStats: ...

    @abc.abstractmethod
    def expire_due(self) -> int:
        """Closes open selections whose wait window has passed; returns how many."""

    @abc.abstractmethod
    def healthy(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...
