"""The implicit estimator of a pool whose tasks carry embedding codes (docs/similarity.md).

The neighbour graph is not stored: it is a function of the codes, rebuilt
the same way on every replica. Codes are int8 and at most 32 wide, so every
squared distance is an integer below 2^24 and every float32 sum that makes it
is exact: the exact search gives the same neighbours whatever the BLAS, its
threads or the CPU. Above ``EXACT_LIMIT`` tasks faiss HNSW builds the graph
on one thread (its insertion order, and so its graph, depends on nothing else).

A graph covers the tasks the pool had when it was built. Tasks added later
get no implicit evidence until the next step rebuilds it over every task;
the sums of the tasks it already covered are kept, new tasks start empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from bots_core._config import EstimatorKind, PoolConfig
from bots_core._embeddings import Codes
from bots_core._errors import InvalidInputError
from bots_core._neighbours import DEFAULT_K, EXACT_LIMIT, NeighbourGraph, knn_graph
from bots_core._similarity import (
    AnyEstimator,
    CombinedEstimator,
    EstimatorState,
    SimilarityEstimator,
    estimator_for,
)
from bots_core._state import PoolState

PoolEstimator = SimilarityEstimator | CombinedEstimator


@contextlib.contextmanager
def _one_faiss_thread() -> Iterator[None]:
    try:
        import faiss
    except ImportError:  # knn_graph says what to install
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def check_graph_size(tasks: int) -> None:
    """Raises InvalidInputError when a graph of ``tasks`` tasks needs faiss and it is missing."""
    if tasks <= EXACT_LIMIT:
        return
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            f"the similarity estimator needs faiss for pools above {EXACT_LIMIT} tasks, and this "
            "server has none: pip install 'bots-selector[similarity]'"
        ) from None


def graph_of_codes(codes: Codes, k: int = DEFAULT_K) -> NeighbourGraph:
    """The neighbour graph of int8 embedding codes (N, d <= 32), the same on every machine."""
    x = np.ascontiguousarray(codes, dtype=np.float32)
    if len(x) <= EXACT_LIMIT:
        return knn_graph(x, k, exact=True)
    with _one_faiss_thread():
        return knn_graph(x, k, exact=False)


def needs_estimator(config: PoolConfig) -> bool:
    """Whether the pool's estimator reads task embeddings."""
    return config.estimator is not EstimatorKind.INTERPOLATION


def restore(state: PoolState, saved: EstimatorState) -> PoolEstimator:
    """The estimator ``saved`` came from, with its graph rebuilt from the pool's codes."""
    codes = state.embedding_codes
    if codes is None or saved.tasks > len(codes):
        raise InvalidInputError("the pool's embeddings do not cover its estimator's state")
    graph = graph_of_codes(codes[: saved.tasks])
    if state.config.estimator is EstimatorKind.SIMILARITY:
        return SimilarityEstimator.from_state(graph, saved)
    return CombinedEstimator.from_state(graph, saved)


def estimator_at(state: PoolState, current: PoolEstimator | None) -> PoolEstimator | None:
    """The estimator the pool's next step applies with (None: ``apply_step``'s default).

    ``current`` when it covers every task; otherwise one over a graph of all
    tasks, keeping ``current``'s sums for the tasks it covered.

    Raises:
        InvalidInputError: the estimator needs embeddings and the pool has none.
    """
    if not needs_estimator(state.config):
        return None
    if current is not None and current_tasks(current) == state.task_count:
        return current
    codes = state.embedding_codes
    graph = None if codes is None else graph_of_codes(codes)
    if current is None:
        made = estimator_for(state.config, graph)
        assert isinstance(made, SimilarityEstimator | CombinedEstimator)
        return made
    assert graph is not None
    old = current.to_state()
    grow = graph.task_count - old.tasks
    grown = EstimatorState(
        graph.task_count, old.origin, old.observed, old.mse, old.combined_mse,
        np.concatenate([old.sum_s, np.zeros(grow)]), np.concatenate([old.sum_t, np.zeros(grow)]),
        np.concatenate([old.p, np.full(grow, 0.5)]),
        None if old.den is None else np.concatenate([old.den, np.ones(grow)]),
    )  # fmt: skip
    if isinstance(current, CombinedEstimator):
        return CombinedEstimator.from_state(graph, grown)
    return SimilarityEstimator.from_state(graph, grown, current.half_mass)


def current_tasks(est: AnyEstimator) -> int:
    """Tasks the graph of a similarity estimator covers."""
    sim = est.similarity if isinstance(est, CombinedEstimator) else est
    assert isinstance(sim, SimilarityEstimator)
    return sim.graph.task_count
