"""A `torch.utils.data` batch sampler whose batches are BOTS selections from the service."""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bots_client import (
    OverloadedError,
    SelectedTask,
    Selection,
    SelectorClient,
    UnavailableError,
)
from torch.utils.data import Sampler

from bots_adapters._ledger import SelectionLedger
from bots_adapters._reporter import KEEP_TRAINING, OutcomeReporter, check_outage_policy

log = logging.getLogger("bots_adapters.sampler")
MAX_WAIT_SECONDS = 30 * 86400.0  # the server's limit for SelectBatch wait_seconds

_STATE_VERSION = 1


class KeyIndex:
    """The two-way mapping between dataset indices and task keys.

    Args:
        keys: ``keys[i]`` is the task key of dataset index ``i``; or a mapping
            key -> dataset index.
    """

    def __init__(self, keys: Sequence[str] | Mapping[str, int]) -> None:
        if isinstance(keys, Mapping):
            self.index_of: dict[str, int] = {str(k): int(i) for k, i in keys.items()}
        else:
            self.index_of = {}
            for i, k in enumerate(keys):
                if k in self.index_of:
                    raise ValueError(
                        f"task key {k!r} appears twice (indices {self.index_of[k]}, {i})"
                    )
                self.index_of[str(k)] = i
        self.key_of = {i: k for k, i in self.index_of.items()}
        if len(self.key_of) != len(self.index_of):
            raise ValueError("two task keys map to the same dataset index")

    def __len__(self) -> int:
        return len(self.index_of)

    def indices(self, keys: Sequence[str]) -> list[int]:
        """Dataset indices of ``keys``.

        Raises:
            KeyError: A key the mapping does not know (the pool holds tasks the dataset lacks).
        """
        try:
            return [self.index_of[k] for k in keys]
        except KeyError as err:
            raise KeyError(
                f"the pool selected task {err.args[0]!r}, which is not in this sampler's "
                "key mapping"
            ) from None

    def keys(self, indices: Sequence[int]) -> list[str]:
        """Task keys of dataset ``indices``."""
        return [self.key_of[int(i)] for i in indices]


def local_selection(
    keys: Sequence[str], batch_size: int, *, run_id: str, step: int, expected_trials: float
) -> Selection:
    """The batch a sampler uses for ``step`` while the service is unreachable.

    ``batch_size`` distinct tasks drawn uniformly from ``keys`` by a generator
    seeded with (``run_id``, ``step``), so every rank of a run that falls back
    for the same step makes the same batch. Its ``selection_id`` is empty:
    evidence for it is reported as standalone steps.
    """
    seed = int.from_bytes(hashlib.sha256(f"{run_id}\0{step}".encode()).digest()[:8], "big")
    chosen = random.Random(seed).sample(sorted(keys), batch_size)
    tasks = tuple(SelectedTask(k, -1, math.nan, math.nan) for k in chosen)
    return Selection("", tasks, False, -1, expected_trials)


def is_local(selection: Selection) -> bool:
    """True for a batch made locally during an outage (see `local_selection`)."""
    return selection.selection_id == ""


class BotsBatchSampler(Sampler[list[int]]):
    """Yields one BOTS selection per batch, as dataset indices, for ``DataLoader(batch_sampler=...)``.

    Batch ``j`` of epoch ``e`` is the selection of training step
    ``start_step + e * steps_per_epoch + j`` of run ``run_id``. The service
    answers the same (run id, step) with the same selection, so every
    data-parallel rank that builds this sampler with the same arguments gets
    identical batches, and a step drawn again after a restart is the same
    batch (a replay, not a new BOTS step).

    ``state_dict``/``load_state_dict`` save and restore the position, so a
    resumed run (a torchdata ``StatefulDataLoader`` calls them itself)
    continues with the next step: no selection is replayed or skipped.
    ``__len__`` is nominal (``steps_per_epoch``): BOTS draws with
    replacement across steps, an "epoch" is just a number of steps.

    **Outages** (``on_outage``): with ``"keep_training"`` (default), a draw
    that fails because the service is unreachable (after the client's own
    retries) makes the batch locally instead (`local_selection`: uniform,
    seeded by run id and step, so ranks agree) and the sampler enters
    degraded mode (logged; ``degraded_batches`` counts, also in the given
    ``reporter``'s stats). While degraded, it probes the service at most
    every ``probe_interval`` seconds and uses local batches in between; the
    first draw that gets through leaves degraded mode (logged). Local batches
    have an empty ``selection_id``, so their evidence is reported as
    standalone steps. ``"fail_fast"`` raises the client's error instead.

    **Ranks** normally each ask the service (it answers a (run id, step) the
    same way for all). At the edge of an outage one rank may still reach it
    while another falls back; pass ``share`` to rule that out: only the
    ``leader`` draws, and ``share(selection_or_None)``, called on every rank
    at every step, must return the leader's value (e.g. a
    ``torch.distributed.broadcast_object_list`` from rank 0).

    **Wait window.** A selection waits the pool's ``selection_wait_seconds``
    (default 600) for its rewards. Loaders draw ahead, so a selection waits
    about two steps; once the observed step time makes that longer than the
    window, the sampler logs a warning naming the setting and asks for a wait
    of four step times with each selection (SelectBatch ``wait_seconds``).
    Evidence that still arrives late is applied, as a standalone step
    (`OutcomeReporter` with ``on_closed="standalone"``).

    Args:
        client: Connected client.
        pool: Pool whose tasks are the dataset's.
        keys: Dataset index -> task key (sequence), or task key -> index (mapping).
        batch_size: Tasks per batch.
        run_id: Training run id; the same on every rank of one run, a new one
            for a new run (steps are deduplicated per run id).
        steps_per_epoch: Batches per epoch; default ``len(keys) // batch_size``.
        start_step: Step number of the first batch.
        expected_trials: Trials each task will report (rollouts per task); 0
            means the pool's ``pseudo_rollouts``.
        history: How many recent selections `selection` can still look up.
        on_outage: ``"keep_training"`` or ``"fail_fast"`` (see above).
        reporter: Reporter whose ``stats.degraded_batches`` counts local batches.
        probe_interval: Seconds between attempts to reach the service while degraded.
        share: Makes every rank use the leader's draw (see above).
        leader: Whether this rank draws when ``share`` is given.
    """

    def __init__(
        self,
        client: SelectorClient,
        pool: str,
        keys: Sequence[str] | Mapping[str, int],
        batch_size: int,
        *,
        run_id: str,
        steps_per_epoch: int | None = None,
        start_step: int = 0,
        expected_trials: float = 0.0,
        history: int = 256,
        on_outage: str = KEEP_TRAINING,
        reporter: OutcomeReporter | None = None,
        probe_interval: float = 10.0,
        share: Callable[[Selection | None], Selection] | None = None,
        leader: bool = True,
    ) -> None:
        if not run_id:
            raise ValueError("run_id is required: it keys the selections of the run's steps")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.client = client
        self.pool = pool
        self.key_index = KeyIndex(keys)
        if batch_size > len(self.key_index):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.key_index)} tasks")
        self.batch_size = batch_size
        self.run_id = run_id
        self.steps_per_epoch = steps_per_epoch or max(1, len(self.key_index) // batch_size)
        self.start_step = start_step
        self.expected_trials = expected_trials
        self.ledger = SelectionLedger(history)
        self.epoch = 0
        self.position = 0
        self.current_step: int | None = None
        self.current_selection: Selection | None = None
        self.on_outage = check_outage_policy(on_outage)
        self.reporter = reporter
        self.probe_interval = probe_interval
        self.share = share
        self.leader = leader
        self.degraded = False
        self.degraded_batches = 0
        self._last_probe = 0.0
        self._last_draw: float | None = None
        self._wait_window: float | None = None
        self._window_warned = False
        # Longest of the recent intervals between draws (draw-ahead makes some tiny).
        self._intervals: collections.deque[float] = collections.deque(maxlen=8)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Moves to the start of ``epoch`` (a no-op when already inside it, e.g. after a resume)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def step_number(self, epoch: int, position: int) -> int:
        """The training step of batch ``position`` of ``epoch``."""
        return self.start_step + epoch * self.steps_per_epoch + position

    def draw(self, step: int) -> Selection:
        """Selects (or replays) the batch of ``step`` and records it.

        Raises:
            UnavailableError: The service is unreachable and ``on_outage="fail_fast"``.
        """
        if self.share is None:
            sel = self._draw(step)
        else:
            sel = self.share(self._draw(step) if self.leader else None)
        if is_local(sel):
            self.degraded_batches += 1
            if self.reporter is not None:
                self.reporter.count_degraded_batch()
        self.ledger.add(step, sel)
        self._watch_step_time()
        return sel

    def _draw(self, step: int) -> Selection:
        local = self.degraded and time.monotonic() - self._last_probe < self.probe_interval
        if not local:
            try:
                if self.degraded:
                    self.client.get_pool(self.pool, timeout=2.0)  # a cheap probe first
                sel = self.client.select_batch(
                    self.pool,
                    self.batch_size,
                    run_id=self.run_id,
                    step=step,
                    expected_trials=self.expected_trials,
                    wait_seconds=self.wait_seconds(),
                )
            except (UnavailableError, OverloadedError) as err:
                if self.on_outage != KEEP_TRAINING:
                    raise
                self._last_probe = time.monotonic()
                if not self.degraded:
                    self.degraded = True
                    log.warning(
                        "selector service unreachable at step %d (%s): sampler entering degraded "
                        "mode; batches are drawn locally (uniform, seeded by run id and step) "
                        "until it is back",
                        step,
                        err,
                    )
            else:
                if self.degraded:
                    self.degraded = False
                    log.warning(
                        "selector service reachable again at step %d: sampler leaving degraded "
                        "mode after %d local batch(es)",
                        step,
                        self.degraded_batches,
                    )
                return sel
        return local_selection(
            list(self.key_index.index_of),
            self.batch_size,
            run_id=self.run_id,
            step=step,
            expected_trials=self.expected_trials,
        )

    def wait_seconds(self) -> float:
        """The wait window to ask for the next selection (0 = the pool's own).

        A selection drawn ahead waits about two steps for its rewards; once the
        observed step time makes that longer than the pool's
        ``selection_wait_seconds``, selections ask for four step times instead.
        """
        if not self._intervals or self._wait_window is None:
            return 0.0
        needed = 4 * max(self._intervals)
        return min(needed, MAX_WAIT_SECONDS) if needed > self._wait_window else 0.0

    def _watch_step_time(self) -> None:
        now = time.monotonic()
        last, self._last_draw = self._last_draw, now
        if last is None or self.degraded:
            return
        self._intervals.append(now - last)
        if self._wait_window is None:
            try:
                self._wait_window = self.client.get_pool(self.pool).config.selection_wait_seconds
            except Exception:  # only the window sizing depends on it
                return
        step_time = max(self._intervals)
        if 2 * step_time > self._wait_window and not self._window_warned:
            self._window_warned = True
            log.warning(
                "a step takes about %.0fs and the loader draws a batch ahead, so a selection "
                "waits about %.0fs for its rewards: longer than pool %r's "
                "selection_wait_seconds=%.0f. Selections now ask for a wait of %.0fs; rewards "
                "that still come late are applied as standalone steps (on_closed='standalone')",
                step_time,
                2 * step_time,
                self.pool,
                self._wait_window,
                4 * step_time,
            )

    def __iter__(self) -> Iterator[list[int]]:
        while self.position < self.steps_per_epoch:
            step = self.step_number(self.epoch, self.position)
            sel = self.draw(step)
            indices = self.key_index.indices(sel.keys)
            # Advance before yielding: a state_dict taken while the batch is in use
            # points at the next batch, so a resume neither repeats nor skips it.
            self.position += 1
            self.current_step, self.current_selection = step, sel
            yield indices
        self.epoch += 1
        self.position = 0

    def selection(self, step: int) -> Selection:
        """The selection of a recent ``step``.

        Raises:
            KeyError: The step was not drawn by this sampler or is too old.
        """
        sel = self.ledger.get(step)
        if sel is None:
            raise KeyError(f"step {step} was not drawn recently by this sampler")
        return sel

    def selection_for(self, batch: Sequence[str] | Sequence[int]) -> tuple[int, Selection]:
        """The (step, selection) a batch came from, given its task keys or dataset indices.

        Use it when the data loader prefetches (``num_workers > 0``) and
        `current_selection` may already point at a later batch.

        Raises:
            KeyError: No recent selection has these tasks.
        """
        keys = [self.key_index.key_of[int(x)] if not isinstance(x, str) else x for x in batch]
        found = self.ledger.match(keys)
        if found is None:
            raise KeyError("no recent selection matches this batch")
        return found

    def state_dict(self) -> dict[str, Any]:
        """Position of the next batch (plus identity checks)."""
        return {
            "version": _STATE_VERSION,
            "run_id": self.run_id,
            "pool": self.pool,
            "epoch": self.epoch,
            "position": self.position,
            "steps_per_epoch": self.steps_per_epoch,
            "start_step": self.start_step,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a position saved by `state_dict`.

        Raises:
            ValueError: The state belongs to another run, pool or batch geometry.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown sampler state version {state.get('version')!r}")
        for name in ("run_id", "pool", "steps_per_epoch", "start_step", "batch_size"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"sampler state has {name}={state[name]!r}, this sampler has "
                    f"{getattr(self, name)!r}"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
