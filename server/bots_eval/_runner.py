"""Runs simulated trainings: every method and sweep variant, for several seeds."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt
from bots_api.v1 import selector_pb2 as pb
from bots_api.v1 import selector_pb2_grpc
from bots_core import PoolConfig

from bots_eval._backend import EngineBackend, GrpcBackend, PoolBackend
from bots_eval._learner import Learner, LearnerModel, World
from bots_eval._methods import (
    METHOD_NAMES,
    METHODS,
    Method,
    curriculum_batch,
    easy_to_hard_order,
)
from bots_eval._metrics import pearson, roc_auc, step_ratios

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SWEEPS: tuple[str, ...] = ("lambda", "rho", "trainers", "sharing", "sharing_ablation", "similarity")
DEFAULT_SWEEPS: tuple[str, ...] = ("lambda", "rho", "trainers")
BASELINE = "uniform"
_SEPARATE_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Arm:
    """How K trainers trained side by side use the engine.

    Attributes:
        name: Short name.
        label: Human-readable description.
        shared: One pool for all trainers (else a pool each).
        own_runs: Each trainer selects and reports as its own run
            ("trainer-<j>"); else all report as one run ("shared").
        forgetting: How the pool config is set: "default" (the user's
            config, unchanged), "per_run_step" (forgetting and implicit weight
            set by hand to 1 - (1 - lambda) ** (1 / K) and rho / K) or
            "per_pool_step" (set to 1 - (1 - lambda) ** K and min(1, K rho),
            which the engine's own per-run-step scaling turns back into
            lambda and rho per pool step).
    """

    name: str
    label: str
    shared: bool
    own_runs: bool = True
    forgetting: str = "default"

    def config(self, config: PoolConfig, k: int) -> PoolConfig:
        """The pool config this arm uses for K trainers."""
        lam, rho = config.forgetting, config.implicit_weight
        if self.forgetting == "per_run_step":
            return config.replace(
                forgetting=1.0 - (1.0 - lam) ** (1.0 / k), implicit_weight=rho / k
            )
        if self.forgetting == "per_pool_step":
            return config.replace(
                forgetting=1.0 - (1.0 - lam) ** k, implicit_weight=min(1.0, rho * k)
            )
        return config

    def run_id(self, trainer: int) -> str:
        """The run id trainer ``trainer`` selects and reports with."""
        return f"trainer-{trainer}" if self.own_runs else "shared"


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("separate", "separate pools", shared=False),
        Arm("shared", "one pool, a run per trainer (default)", shared=True),
        Arm("one_run", "one pool, all trainers one run", shared=True, own_runs=False),
        Arm(
            "one_run_per_run_step",
            "one pool, one run, forgetting per run-step by hand",
            shared=True,
            own_runs=False,
            forgetting="per_run_step",
        ),
        Arm(
            "runs_per_pool_step",
            "one pool, a run per trainer, forgetting per pool step",
            shared=True,
            forgetting="per_pool_step",
        ),
    )
}
# Arms of the trainers experiment: separate pools, one pool with a run per
# trainer (what a user gets), one pool used as a single run (the pool before
# runs existed: lambda per pool step, no per-run capability).
TRAINER_ARMS: tuple[str, ...] = ("separate", "shared", "one_run")
# Estimator quality against the learner's true p is measured every this many steps.
TRUTH_EVERY = 5
# How long to wait for a --server to accept the connection.
CONNECT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    Attributes:
        tasks: Training tasks N in the pool.
        batch_size: Tasks per step B.
        rollouts: Rollouts per task n (also the pools' pseudo-rollout count).
        steps: Training steps T per trainer.
        seeds: Number of seeds (0 .. seeds - 1).
        methods: Methods to compare (see ``METHODS``); uniform always runs
            as the baseline.
        sweeps: Which of ``SWEEPS`` to run ("sharing_ablation" adds the
            ablation arms to the sharing experiment and implies it).
        lambdas: Forgetting rates of the lambda sweep (rho = 0.1).
        rhos: Implicit weights of the rho sweep (lambda = 0.1).
        trainers: Trainers K of the shared-versus-separate experiment.
        trainer_methods: Methods of that experiment.
        sharing_runs: Numbers of runs K of the sharing experiment (BOTS
            preset); its mixed-strength scenario uses the even ones.
        head_start: How much higher the global ability of the strong runs
            of the mixed scenario starts (logits).
        family_size: Tasks per family in the similarity experiment's world
            (when ``model`` has no families of its own).
        model: The simulated learner and tasks.
        server: Address of a BOTS server to select through; None = in-process.
    """

    tasks: int = 4096
    batch_size: int = 64
    rollouts: int = 16
    steps: int = 300
    seeds: int = 5
    methods: tuple[str, ...] = METHOD_NAMES
    sweeps: tuple[str, ...] = DEFAULT_SWEEPS
    lambdas: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)
    rhos: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6, 1.0)
    trainers: int = 4
    trainer_methods: tuple[str, ...] = ("bots", "explicit_only")
    sharing_runs: tuple[int, ...] = (1, 2, 4, 8)
    head_start: float = 2.0
    family_size: int = 16
    model: LearnerModel = field(default_factory=LearnerModel)
    server: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= self.tasks:
            raise ValueError(f"batch size must be in [1, tasks={self.tasks}]")
        if self.rollouts < 1 or self.steps < 2 or self.seeds < 1 or self.trainers < 1:
            raise ValueError("rollouts, seeds and trainers must be >= 1 and steps >= 2")
        if self.family_size < 1:
            raise ValueError("family size must be >= 1")
        if not self.sharing_runs or min(self.sharing_runs) < 1:
            raise ValueError("sharing runs must be >= 1")
        unknown = sorted((set(self.methods) | set(self.trainer_methods)) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods: {', '.join(unknown)} (known: {', '.join(METHODS)})")
        bad = sorted(set(self.sweeps) - set(SWEEPS))
        if bad:
            raise ValueError(f"unknown sweeps: {', '.join(bad)} (known: {', '.join(SWEEPS)})")

    def pool_config(self, method: Method, seed: int) -> PoolConfig:
        """The method's pool config for this run: n = rollouts, the given seed."""
        return method.config.replace(pseudo_rollouts=float(self.rollouts), seed=seed)


@dataclass
class RunResult:
    """One trainer's simulated training under one method and seed.

    Attributes:
        variant: Method or sweep variant name.
        seed: Seed.
        etr: Effective task ratio per step (T).
        positive: Fraction of the batch with pass rate > 0 per step.
        below_one: Fraction of the batch with pass rate < 1 per step.
        signal: Mean useful signal per step.
        accuracy: Held-out accuracy after 0..T steps (T + 1).
        select_seconds: Time of each step's selection call.
        update_seconds: Time of each step's report (the engine update).
        estimate: p~ of each evaluated task at the time it was selected
            (steps after mu~ was first known), pooled over steps.
        observed: The observed pass rates matching ``estimate``.
        truth_pearson: Mean over sampled steps of Pearson(p~, true p) over
            all tasks (NaN if mu~ was never known).
        truth_auc: Same for the ROC AUC of p~ for "true p > 1/2".
        coverage: Fraction of the pool selected at least once.
        selections: Each step's selected indices, when recorded.
    """

    variant: str
    seed: int
    etr: FloatArray
    positive: FloatArray
    below_one: FloatArray
    signal: FloatArray
    accuracy: FloatArray
    select_seconds: FloatArray
    update_seconds: FloatArray
    estimate: FloatArray
    observed: FloatArray
    truth_pearson: float
    truth_auc: float
    coverage: float
    selections: list[IntArray] | None = None


@dataclass
class TrainerGroupResult:
    """K trainers trained side by side, sharing one pool or each with its own.

    Attributes:
        method: Method name.
        arm: One of ``ARMS``.
        seed: Seed.
        accuracy: Held-out accuracy, shape (K, T + 1).
        etr: Effective task ratio, shape (K, T).
        select_seconds: Time of each selection call, shape (K, T).
        trainers: Index j of each trainer (its rollout stream, and its pool
            seed when pools are separate).
        head_start: Each trainer's head start in global ability.
        scenario: Which experiment the group belongs to ("" for the trainers
            sweep, "same" or "mixed" for the sharing experiment).
    """

    method: str
    arm: str
    seed: int
    accuracy: FloatArray
    etr: FloatArray
    select_seconds: FloatArray
    trainers: tuple[int, ...]
    head_start: tuple[float, ...]
    scenario: str = ""


@dataclass
class Experiment:
    """Everything a simulation produced.

    Attributes:
        config: What was simulated.
        variants: Variant name to its method (label, config).
        runs: Variant name to its runs, one per seed in seed order.
        sweeps: Sweep name to its (value, variant name) pairs.
        trainer_runs: Results of the shared-versus-separate experiment.
        sharing_runs: Results of the sharing experiment (separate pools as
            one-trainer groups).
        family_runs: Results of the similarity experiment: method name to
            its runs, one per seed in seed order.
        wall_seconds: Total wall time.
    """

    config: SimConfig
    variants: dict[str, Method] = field(default_factory=dict)
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    sweeps: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    trainer_runs: list[TrainerGroupResult] = field(default_factory=list)
    sharing_runs: list[TrainerGroupResult] = field(default_factory=list)
    family_runs: dict[str, list[RunResult]] = field(default_factory=dict)
    wall_seconds: float = 0.0


BackendFactory = Callable[[str, PoolConfig, World], PoolBackend]


@contextlib.contextmanager
def backend_factory(server: str | None) -> Iterator[BackendFactory]:
    """Yields a function that opens pools in-process, or on ``server`` when given."""
    if server is None:
        yield EngineBackend
        return
    with grpc.insecure_channel(server) as channel:
        # One cheap call that waits for the connection; unlike
        # grpc.channel_ready_future it leaves no thread behind.
        stub = selector_pb2_grpc.TaskSelectorStub(channel)  # type: ignore[no-untyped-call]
        stub.ListPools(pb.ListPoolsRequest(), timeout=CONNECT_TIMEOUT_S, wait_for_ready=True)

        def make(name: str, config: PoolConfig, world: World) -> PoolBackend:
            return GrpcBackend(channel, name, config, world)

        yield make


def _estimates(world: World, mu: float, idx: IntArray) -> FloatArray:
    p = world.weak[idx] + mu * (world.strong[idx] - world.weak[idx])
    return np.asarray(np.clip(p, 0.0, 1.0), dtype=np.float64)


class _Trace:
    """Per-step records of one trainer."""

    def __init__(self, steps: int) -> None:
        self.etr = np.empty(steps)
        self.positive = np.empty(steps)
        self.below_one = np.empty(steps)
        self.signal = np.empty(steps)
        self.accuracy = np.empty(steps + 1)
        self.select_s = np.empty(steps)
        self.update_s = np.empty(steps)
        self.estimate: list[FloatArray] = []
        self.observed: list[FloatArray] = []
        self.truth_pearson: list[float] = []
        self.truth_auc: list[float] = []
        self.selections: list[IntArray] = []

    def truth(self) -> tuple[float, float]:
        """Means of the sampled estimator-quality values (NaN samples left out)."""

        def mean(values: list[float]) -> float:
            ok = [v for v in values if not math.isnan(v)]
            return float(np.mean(ok)) if ok else math.nan

        return mean(self.truth_pearson), mean(self.truth_auc)


def _train_step(
    t: int,
    pool: PoolBackend,
    learner: Learner,
    rng: np.random.Generator,
    cfg: SimConfig,
    trace: _Trace,
    schedule: Callable[[int], IntArray] | None,
    truth: bool = False,
    run: str = "",
) -> None:
    """One select -> rollout -> report -> learn step of one trainer."""
    world = learner.world
    mu = pool.capability()
    true_p = learner.success_prob() if truth and t % TRUTH_EVERY == 0 else None
    t0 = time.perf_counter()
    idx = pool.select(cfg.batch_size, run) if schedule is None else schedule(t)
    t1 = time.perf_counter()
    successes = learner.rollout(idx, cfg.rollouts, rng)
    trials = np.full(len(idx), float(cfg.rollouts))
    t2 = time.perf_counter()
    if schedule is None:
        pool.report(idx, successes, trials, run)
    else:
        pool.report_standalone(idx, successes, trials, run)
    t3 = time.perf_counter()
    trace.signal[t] = learner.learn(idx, successes, trials)
    trace.accuracy[t + 1] = learner.heldout_accuracy()
    ratios = step_ratios(successes, trials)
    trace.etr[t], trace.positive[t], trace.below_one[t] = (
        ratios.effective,
        ratios.positive,
        ratios.below_one,
    )
    trace.select_s[t] = t1 - t0
    trace.update_s[t] = t3 - t2
    if not math.isnan(mu):
        trace.estimate.append(_estimates(world, mu, idx))
        trace.observed.append(successes / trials)
        if true_p is not None:
            est = _estimates(world, mu, np.arange(world.task_count))
            trace.truth_pearson.append(pearson(est, true_p))
            trace.truth_auc.append(roc_auc(est, true_p > 0.5))
    trace.selections.append(idx)


def run_single(
    method: Method,
    world: World,
    cfg: SimConfig,
    seed: int,
    make_backend: BackendFactory = EngineBackend,
    *,
    variant: str | None = None,
    record_selections: bool = False,
) -> RunResult:
    """Trains one simulated learner for ``cfg.steps`` steps with ``method``.

    Args:
        method: How batches are chosen.
        world: Tasks and starting model (from ``make_world(..., seed)``).
        cfg: Sizes.
        seed: Seeds the pool and the rollouts.
        make_backend: Opens the pool (in-process by default).
        variant: Name recorded in the result (default: the method's name).
        record_selections: Keep each step's selected indices.

    Returns:
        The run's per-step records.
    """
    learner = Learner(world)
    rng = np.random.default_rng([seed, 1, 0])
    trace = _Trace(cfg.steps)
    trace.accuracy[0] = learner.heldout_accuracy()
    pool = make_backend(f"sim-{method.name}-s{seed}", cfg.pool_config(method, seed), world)
    schedule: Callable[[int], IntArray] | None = None
    if method.offline:
        crng = np.random.default_rng([seed, 2])
        order = easy_to_hard_order(world.weak, world.strong, crng)

        def schedule(t: int) -> IntArray:
            return curriculum_batch(order, t, cfg.steps, cfg.batch_size, crng)

    try:
        for t in range(cfg.steps):
            _train_step(t, pool, learner, rng, cfg, trace, schedule, truth=True)
    finally:
        pool.close()
    est = np.concatenate(trace.estimate) if trace.estimate else np.zeros(0)
    obs = np.concatenate(trace.observed) if trace.observed else np.zeros(0)
    truth_r, truth_auc = trace.truth()
    return RunResult(
        variant or method.name,
        seed,
        trace.etr,
        trace.positive,
        trace.below_one,
        trace.signal,
        trace.accuracy,
        trace.select_s,
        trace.update_s,
        est,
        obs,
        truth_r,
        truth_auc,
        len(np.unique(np.concatenate(trace.selections))) / world.task_count,
        trace.selections if record_selections else None,
    )


def run_group(
    method: Method,
    world: World,
    cfg: SimConfig,
    seed: int,
    arm: str,
    head_start: Sequence[float],
    make_backend: BackendFactory = EngineBackend,
    *,
    trainers: Sequence[int] | None = None,
    scenario: str = "",
) -> TrainerGroupResult:
    """Trains K learners of the same world side by side, K = ``len(head_start)``.

    Each round, every trainer in turn selects, trains and reports. In the
    shared arms they all use one pool (seeded with ``seed``) and see each
    other's evidence, each as its own run or all as one (see :class:`Arm`). In
    "separate" trainer j has its own pool seeded ``seed + 1000003 j``. Trainer j
    always draws its rollouts from the same stream, so a trainer's separate
    run does not depend on which other trainers exist, and a single trainer 0
    is exactly :func:`run_single` with the same seed.

    Args:
        method: How batches are chosen (not an offline one).
        world: Tasks and starting model.
        cfg: Sizes.
        seed: Seed.
        arm: A name of ``ARMS``.
        head_start: Each trainer's head start in global ability.
        make_backend: Opens pools.
        trainers: Each trainer's index j (default 0 .. K - 1).
        scenario: Recorded in the result.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}")
    if method.offline:
        raise ValueError("trainers side by side need an online method")
    how = ARMS[arm]
    k = len(head_start)
    ids = tuple(range(k)) if trainers is None else tuple(trainers)
    if len(ids) != k:
        raise ValueError("one trainer index per head start")
    learners = [Learner(world, h) for h in head_start]
    rngs = [np.random.default_rng([seed, 1, j]) for j in ids]
    traces = [_Trace(cfg.steps) for _ in range(k)]
    for learner, trace in zip(learners, traces, strict=True):
        trace.accuracy[0] = learner.heldout_accuracy()
    config = how.config(cfg.pool_config(method, seed), k)
    if how.shared:
        pools = [make_backend(f"sim-{arm}-{method.name}-s{seed}", config, world)] * k
    else:
        pools = [
            make_backend(
                f"sim-sep{j}-{method.name}-s{seed}",
                config.replace(seed=seed + _SEPARATE_SEED_STRIDE * j),
                world,
            )
            for j in ids
        ]
    runs = [how.run_id(j) if how.shared else "" for j in ids]
    try:
        for t in range(cfg.steps):
            for i in range(k):
                _train_step(t, pools[i], learners[i], rngs[i], cfg, traces[i], None, run=runs[i])
    finally:
        for pool in pools[:1] if how.shared else pools:
            pool.close()
    return TrainerGroupResult(
        method.name,
        arm,
        seed,
        np.stack([tr.accuracy for tr in traces]),
        np.stack([tr.etr for tr in traces]),
        np.stack([tr.select_s for tr in traces]),
        ids,
        tuple(float(h) for h in head_start),
        scenario,
    )


def run_trainers(
    method: Method,
    world: World,
    cfg: SimConfig,
    seed: int,
    arm: str,
    make_backend: BackendFactory = EngineBackend,
) -> TrainerGroupResult:
    """``cfg.trainers`` learners from the same starting model side by side (see :func:`run_group`)."""
    return run_group(method, world, cfg, seed, arm, [0.0] * cfg.trainers, make_backend)
