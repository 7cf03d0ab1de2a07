"""Property tests of the engine: Proposition 2, order invariance, the bytes round trip."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from bots_core import (
    ETR_WINDOW,
    PoolConfig,
    PoolState,
    SelectionMode,
    StepResult,
    TaskSpec,
    aggregate,
    apply_step,
    select_batch,
)
from hypothesis import given, settings
from hypothesis import strategies as st

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)

unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)
prior = st.floats(0.05, 20.0, allow_nan=False)
count = st.floats(0.25, 64.0, allow_nan=False)


@dataclass(frozen=True)
class Task:
    has_ref: bool
    weak: float
    strong: float
    prior_alpha: float
    prior_beta: float

    def spec(self, key: str) -> TaskSpec:
        if self.has_ref:
            return TaskSpec(key, self.weak, self.strong, self.prior_alpha, self.prior_beta)
        return TaskSpec(key, prior_alpha=self.prior_alpha, prior_beta=self.prior_beta)


tasks_st = st.lists(
    st.builds(Task, st.booleans(), unit, unit, prior, prior), min_size=1, max_size=8
)

config_st = st.builds(
    PoolConfig,
    forgetting=unit,
    implicit_weight=unit,
    pseudo_rollouts=st.floats(0.5, 64.0),
    momentum=st.floats(0.0, 0.99),
    min_reference_gap=st.sampled_from([0.0, 1e-3, 0.1]),
)


def build(config: PoolConfig, tasks: list[Task]) -> PoolState:
    state = PoolState("prop", config)
    state.add_tasks([t.spec(f"k{i}") for i, t in enumerate(tasks)])
    return state


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[PoolConfig, list[Task], list[dict[int, tuple[float, float]]]]:
    """A pool and a sequence of steps; each step maps task -> (successes, trials)."""
    config = draw(config_st)
    tasks = draw(tasks_st)
    n = len(tasks)
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        chosen = draw(st.sets(st.integers(0, n - 1), max_size=n))
        reports = {}
        for i in sorted(chosen):
            trials = draw(count)
            reports[i] = (draw(unit) * trials, trials)
        steps.append(reports)
    return config, tasks, steps


# ----------------------------------------------------------------- Proposition 2
@PROPERTY_SETTINGS
@given(scenarios())
def test_effective_sample_size_follows_proposition_2(
    scenario: tuple[PoolConfig, list[Task], list[dict[int, tuple[float, float]]]],
) -> None:
    config, tasks, steps = scenario
    state = build(config, tasks)
    lam, rho, n_pseudo = config.forgetting, config.implicit_weight, config.pseudo_rollouts
    keep = 1.0 - lam
    prior_mass = state.alpha0 + state.beta0
    x = np.zeros(len(tasks))  # (alpha + beta) - (alpha0 + beta0), by the recursion
    e_seen: list[list[float]] = [[] for _ in tasks]
    geo = 0.0  # sum_{j < t} (1 - lambda)^j

    for reports in steps:
        evidence = aggregate(state, [(f"k{i}", s, t) for i, (s, t) in reports.items()])
        apply_step(state, evidence)
        implicit_on = rho > 0.0 and not math.isnan(state.capability)
        for i, task in enumerate(tasks):
            if i in reports:
                e = reports[i][1]
            elif task.has_ref and implicit_on:
                e = rho * n_pseudo
            else:
                e = 0.0
            x[i] = keep * x[i] + e
            e_seen[i].append(e)
        geo = keep * geo + 1.0

        # Posteriors stay proper.
        assert np.all(np.isfinite(state.alpha)) and np.all(np.isfinite(state.beta))
        assert np.all(state.alpha > 0.0) and np.all(state.beta > 0.0)

        mass = state.alpha + state.beta - prior_mass
        scale = 1.0 + np.abs(state.alpha) + np.abs(state.beta)
        np.testing.assert_allclose(mass, x, rtol=0, atol=1e-9 * scale.max())
        for i in range(len(tasks)):
            # Memory is bounded by the smallest and largest per-step evidence.
            lo, hi = min(e_seen[i]) * geo, max(e_seen[i]) * geo
            slack = 1e-9 * scale[i]
            assert lo - slack <= mass[i] <= hi + slack
            if lam > 0.0:
                # The cap of Proposition 2: at most max(e) / lambda pseudo-observations.
                assert mass[i] <= max(e_seen[i]) / lam + slack


@PROPERTY_SETTINGS
@given(
    lam=st.floats(1e-6, 1.0),
    rho=st.floats(1e-6, 1.0),
    n=st.floats(0.5, 64.0),
    steps=st.integers(1, 30),
)
def test_never_selected_task_keeps_the_implicit_floor(
    lam: float, rho: float, n: float, steps: int
) -> None:
    # "sel" reports every step, so mu~ is known from step one and "never" gets
    # rho * n pseudo-observations each step: x_t = rho n (1 - (1 - lambda)^t) / lambda,
    # rising to the floor rho n / lambda.
    config = PoolConfig(forgetting=lam, implicit_weight=rho, pseudo_rollouts=n)
    state = build(config, [Task(True, 0.0, 1.0, 1.0, 1.0), Task(True, 0.2, 0.7, 1.0, 1.0)])
    geo = 0.0
    for _ in range(steps):
        apply_step(state, aggregate(state, [("k0", 3.0, 8.0)]))
        geo = (1.0 - lam) * geo + 1.0  # = (1 - (1 - lambda)^t) / lambda, stably
        mass = state.alpha[1] + state.beta[1] - 2.0
        assert math.isclose(mass, rho * n * geo, rel_tol=1e-9, abs_tol=1e-9)
        assert mass <= rho * n / lam * (1.0 + 1e-9)


# -------------------------------------------------------------- order invariance
def _same_state(a: PoolState, b: PoolState) -> None:
    assert np.array_equal(a.alpha, b.alpha)
    assert np.array_equal(a.beta, b.beta)
    assert a.capability == b.capability or (math.isnan(a.capability) and math.isnan(b.capability))
    assert list(a.recent_etr) == list(b.recent_etr)


Report = tuple[PoolConfig, list[Task], list[tuple[str, float, float]]]


@st.composite
def reports(draw: st.DrawFn) -> Report:
    """A pool and one report whose outcomes may name a task several times."""
    config = draw(config_st)
    tasks = draw(tasks_st)
    pieces = []
    for i in draw(st.lists(st.integers(0, len(tasks) - 1), min_size=1, max_size=20)):
        trials = draw(count)
        pieces.append((f"k{i}", draw(unit) * trials, trials))
    return config, tasks, pieces


def _same_result(a: StepResult, b: StepResult) -> None:
    for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True):
        assert x == y or (math.isnan(x) and math.isnan(y))


@PROPERTY_SETTINGS
@given(st.data())
def test_step_does_not_depend_on_order_of_outcomes(data: st.DataObject) -> None:
    config, tasks, pieces = data.draw(reports())
    shuffled = data.draw(st.permutations(pieces))

    first, second = build(config, tasks), build(config, tasks)
    ev1, ev2 = aggregate(first, pieces), aggregate(second, shuffled)
    assert np.array_equal(ev1.indices, ev2.indices)
    assert np.array_equal(ev1.successes, ev2.successes)
    assert np.array_equal(ev1.trials, ev2.trials)
    _same_result(apply_step(first, ev1), apply_step(second, ev2))
    _same_state(first, second)


@PROPERTY_SETTINGS
@given(reports())
def test_partial_reports_for_a_task_add_up(report: Report) -> None:
    config, tasks, pieces = report
    totals: dict[str, tuple[list[float], list[float]]] = {}
    for key, s, t in pieces:
        totals.setdefault(key, ([], []))
        totals[key][0].append(s)
        totals[key][1].append(t)
    merged = [(key, math.fsum(ss), math.fsum(ts)) for key, (ss, ts) in totals.items()]

    split_state, merged_state = build(config, tasks), build(config, tasks)
    ev_split = aggregate(split_state, pieces)
    ev_merged = aggregate(merged_state, merged)
    assert len(ev_split.indices) == len(totals)
    assert np.array_equal(ev_split.indices, np.sort(ev_split.indices))
    assert np.array_equal(ev_split.successes, ev_merged.successes)
    assert np.array_equal(ev_split.trials, ev_merged.trials)
    apply_step(split_state, ev_split)
    apply_step(merged_state, ev_merged)
    _same_state(split_state, merged_state)


def test_integer_pieces_equal_one_whole_report() -> None:
    config = PoolConfig()
    tasks = [Task(True, 0.2, 0.6, 1.0, 1.0), Task(False, 0.0, 0.0, 1.0, 1.0)]
    split, whole = build(config, tasks), build(config, tasks)
    apply_step(split, aggregate(split, [("k0", 1, 4), ("k1", 0, 8), ("k0", 3, 4), ("k1", 8, 8)]))
    apply_step(whole, aggregate(whole, [("k1", 8, 16), ("k0", 4, 8)]))
    _same_state(split, whole)


# ------------------------------------------------------------ bytes round trip
key_st = st.text(min_size=1, max_size=24).filter(lambda k: len(k.encode("utf-8")) <= 512)
mode_st = st.sampled_from(list(SelectionMode))


@st.composite
def states(draw: st.DrawFn) -> PoolState:
    config = draw(config_st).replace(
        mode=draw(mode_st),
        seed=draw(st.integers(0, 2**64 - 1)),
        temperature=draw(st.floats(0.01, 10.0)),
    )
    state = PoolState(draw(st.text(max_size=16)), config)
    keys = draw(st.lists(key_st, min_size=0, max_size=10, unique=True))
    tasks = draw(
        st.lists(
            st.builds(Task, st.booleans(), unit, unit, prior, prior),
            min_size=len(keys),
            max_size=len(keys),
        )
    )
    state.add_tasks([t.spec(k) for t, k in zip(tasks, keys, strict=True)])
    n = len(keys)
    positive = st.floats(1e-3, 1e6, allow_nan=False)
    state.alpha[:] = draw(st.lists(positive, min_size=n, max_size=n)) if n else []
    state.beta[:] = draw(st.lists(positive, min_size=n, max_size=n)) if n else []
    state.capability = draw(st.one_of(st.just(math.nan), st.floats(-1e3, 1e3, allow_nan=False)))
    state.steps_applied = draw(st.integers(0, 2**40))
    state.selections_opened = draw(st.integers(0, 2**40))
    for etr in draw(st.lists(unit, max_size=ETR_WINDOW + 20)):
        state.record_etr(etr)
    return state


def _assert_same_contents(a: PoolState, b: PoolState) -> None:
    assert a.name == b.name
    assert a.config == b.config
    assert a.keys == b.keys
    assert a.index == b.index
    for field in ("alpha", "beta", "alpha0", "beta0", "weak", "strong"):
        x, y = getattr(a, field), getattr(b, field)
        assert y.dtype == np.float64
        assert np.array_equal(x, y, equal_nan=True), field
    if math.isnan(a.capability):
        assert math.isnan(b.capability)
    else:
        assert a.capability == b.capability
    assert a.steps_applied == b.steps_applied
    assert a.selections_opened == b.selections_opened
    assert list(a.recent_etr) == list(b.recent_etr)
    assert b.recent_etr.maxlen == ETR_WINDOW
    assert math.isnan(a.rolling_etr) == math.isnan(b.rolling_etr)


@PROPERTY_SETTINGS
@given(states())
def test_state_survives_bytes_round_trip(state: PoolState) -> None:
    data = state.to_bytes()
    restored = PoolState.from_bytes(data)
    _assert_same_contents(state, restored)
    assert restored.to_bytes() == data


@PROPERTY_SETTINGS
@given(states().filter(lambda s: s.task_count > 0), st.integers(0, 2**32))
def test_restored_state_selects_and_updates_like_the_original(
    state: PoolState, number: int
) -> None:
    restored = PoolState.from_bytes(state.to_bytes())
    for batch_size in sorted({1, state.task_count}):
        a = select_batch(state, batch_size, number)
        b = select_batch(restored, batch_size, number)
        assert np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.sampled, b.sampled)
    outcomes = [(state.keys[0], 1.0, 2.0)]
    apply_step(state, aggregate(state, outcomes))
    apply_step(restored, aggregate(restored, outcomes))
    _assert_same_contents(state, restored)


def test_round_trip_keeps_unicode_keys_and_missing_reference_rates() -> None:
    state = PoolState("pool ✓", PoolConfig(seed=2**64 - 1))
    state.add_tasks(
        [
            TaskSpec("数学/题目-1", 0.25, 0.75, 0.5, 2.0),
            TaskSpec("émoji 🚀", prior_alpha=3.0),
            TaskSpec("x" * 512),
        ]
    )
    state.capability = 0.42
    restored = PoolState.from_bytes(state.to_bytes())
    _assert_same_contents(state, restored)
    assert restored.index["émoji 🚀"] == 1
    assert math.isnan(restored.weak[1]) and math.isnan(restored.strong[2])
