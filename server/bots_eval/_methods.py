"""The selection methods compared, and the offline easy-to-hard curriculum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from bots_core import PRESETS, PoolConfig, SelectionMode

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Greek letters for labels, escaped so that the source stays ASCII-clean.
LAMBDA = "\u03bb"
RHO = "\u03c1"


@dataclass(frozen=True)
class Method:
    """A way of choosing each step's batch.

    Attributes:
        name: Short name used on the command line and in reports.
        label: Human-readable description.
        config: Pool config the engine selects with; for an offline method,
            the config of the pool that only tracks its evidence.
        offline: True when the batch comes from a fixed schedule, not from
            the engine (the evidence is still reported to the engine).
    """

    name: str
    label: str
    config: PoolConfig
    offline: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("uniform", "Random (uniform)", PRESETS["uniform"]),
        Method("easy_to_hard", "Offline easy→hard curriculum", PRESETS["uniform"], offline=True),
        Method("explicit_only", f"Explicit only, {RHO}=0 (MoPPS-like)", PRESETS["explicit_only"]),
        Method(
            "implicit_only",
            f"Implicit only, {LAMBDA}={RHO}=1, greedy (DOTS-like)",
            PRESETS["implicit_only"],
        ),
        Method(
            "greedy",
            f"Greedy posterior mean, {LAMBDA}={RHO}=0.1",
            PoolConfig(mode=SelectionMode.GREEDY),
        ),
        Method("bots", f"BOTS, {LAMBDA}={RHO}=0.1, Thompson", PRESETS["bots"]),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def sweep_method(name: str, label: str, config: PoolConfig) -> Method:
    """A BOTS variant of a sweep (e.g. ``name='rho=1'``, ``label='BOTS, \u03c1=1'``)."""
    return Method(name, label, config)


def easy_to_hard_order(weak: FloatArray, strong: FloatArray, rng: np.random.Generator) -> IntArray:
    """Task indices from easiest to hardest by mean reference pass rate (ties at random)."""
    ease = (weak + strong) / 2.0
    return np.lexsort((rng.random(len(ease)), -ease)).astype(np.int64)


def curriculum_batch(
    order: IntArray, step: int, steps: int, batch_size: int, rng: np.random.Generator
) -> IntArray:
    """The batch of an offline easy-to-hard curriculum at ``step`` of ``steps``.

    A window of a quarter of the tasks (at least one batch) slides at constant
    speed from the easiest to the hardest end of ``order`` over the budget;
    each step draws its batch uniformly from the window.
    """
    n = len(order)
    width = min(n, max(batch_size, n // 4))
    frac = step / (steps - 1) if steps > 1 else 0.0
    start = round(frac * (n - width))
    picks = rng.choice(width, size=batch_size, replace=False)
    return np.asarray(order[start + picks], dtype=np.int64)
