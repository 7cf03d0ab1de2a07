"""Several runs sharing one pool (docs/algorithm.md §8): who shares, and how far apart they are.

A *run* is one training run that selects from the pool (its run id; "" for
steps that name none). Two things change when K runs share a pool:

* Forgetting is per run-step, not per pool step: K runs advancing side by
  side make K steps of the pool per round of training, and the pool should
  forget as much per round as a dedicated pool, not K times as much. Each
  step therefore decays by ``(1 - lambda) ** (1 / K)`` and gives
  ``rho * n / K`` implicit pseudo-counts, where K counts the runs with a
  step among the pool's last ``ACTIVE_STEPS`` steps. With one run this is
  exactly the paper's update.
* Runs differ in strength. The weak/strong interpolation is a
  one-dimensional model of a task's pass rate as a function of ability,
  p_k(mu) = w_k + mu (g_k - w_k). Each run has an offset delta_r along it: the
  shrunk least-squares fit of its residuals against the pool's posterior
  means, centred on the runs sharing the pool (``offset``). A run's observed
  rate on a task with reference rates is moved by ``-(g_k - w_k) delta_r``
  before it counts, and its draws by ``+(g_k - w_k) delta_r`` before they are
  compared with the target. A single run is never moved. Each run's own
  capability mu_r (the pool's moving average over its batches) is kept for
  reporting.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

# A run counts as sharing the pool while one of its steps is among the pool's last
# ACTIVE_STEPS steps (pool steps, all runs together).
ACTIVE_STEPS = 256
RUN_ETR_WINDOW = 100
# Prior weight, in units of squared reference gap, that shrinks a run's offset
# towards the pool's (about one batch of 64 tasks with gaps of 0.35).
OFFSET_PRIOR = 8.0
# A run is never moved by more than this many reference gaps.
MAX_OFFSET = 1.0


@dataclass
class RunState:
    """What the engine keeps of one run."""

    capability: float = math.nan  # mu_r
    # Decayed sums behind the run's offset from the pool: sum of gap * residual and
    # of gap**2 over its evaluated tasks with reference rates (see ``residual_offset``).
    s_ge: float = 0.0
    s_gg: float = 0.0
    steps: int = 0  # steps of this run applied
    last_step: int = 0  # the pool's steps_applied right after this run's latest step
    recent_etr: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=RUN_ETR_WINDOW)
    )

    @property
    def last_etr(self) -> float:
        return self.recent_etr[-1] if self.recent_etr else math.nan

    @property
    def rolling_etr(self) -> float:
        return math.fsum(self.recent_etr) / len(self.recent_etr) if self.recent_etr else math.nan

    @property
    def raw_offset(self) -> float:
        """The run's ability above the pool's, in reference gaps (before centring)."""
        value = self.s_ge / (self.s_gg + OFFSET_PRIOR)
        return max(-MAX_OFFSET, min(MAX_OFFSET, value))

    def to_json(self) -> list[Any]:
        cap = None if math.isnan(self.capability) else self.capability
        return [cap, self.steps, self.last_step, list(self.recent_etr), self.s_ge, self.s_gg]

    @classmethod
    def from_json(cls, raw: list[Any]) -> RunState:
        cap, steps, last, etr, s_ge, s_gg = raw
        run = cls(math.nan if cap is None else float(cap), float(s_ge), float(s_gg))
        run.steps, run.last_step = int(steps), int(last)
        run.recent_etr.extend(float(x) for x in etr)
        return run


def sharing(runs: dict[str, RunState], run: str, steps_applied: int) -> int:
    """K: runs with a step among the last ACTIVE_STEPS pool steps, ``run`` included."""
    floor = steps_applied - ACTIVE_STEPS
    return 1 + sum(1 for r, s in runs.items() if r != run and s.steps and s.last_step > floor)


def active(runs: dict[str, RunState], steps_applied: int) -> list[str]:
    """The runs sharing the pool now (a step among its last ACTIVE_STEPS steps)."""
    floor = steps_applied - ACTIVE_STEPS
    return [r for r, s in runs.items() if s.steps and s.last_step > floor]


def run_offset(runs: dict[str, RunState], run: str, steps_applied: int) -> float | None:
    """How much easier tasks are for ``run`` than for the pool, in reference gaps.

    The run's shrunk least-squares offset against the pool's posterior means,
    minus the mean of the active runs' offsets: what all runs have in common
    (the posteriors lagging behind learners that improve) is no difference
    between them. None when fewer than two runs share, or the run has none.
    """
    sharing_now = active(runs, steps_applied)
    state = runs.get(run)
    if len(sharing_now) < 2 or state is None or run not in sharing_now:
        return None
    mean = math.fsum(runs[r].raw_offset for r in sharing_now) / len(sharing_now)
    diff = state.raw_offset - mean
    return diff if diff != 0.0 else None
