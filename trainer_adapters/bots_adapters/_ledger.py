"""Selections drawn by a sampler and not yet matched to rewards, in the order they were drawn."""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from bots_client import Selection


class SelectionLedger:
    """FIFO of (step, selection) pairs that a reward callback matches its rollouts against.

    Trainers draw batches ahead of scoring them (prefetching data loaders),
    and after a resume they may re-draw (replay) steps whose batches are then
    skipped. A reward callback sees only task keys, so `match` finds the
    oldest pending selection consistent with them: every key must belong to
    the selection and the distinct keys, in order of first appearance, must be
    a contiguous run of the selection's order (a rank receives a contiguous
    slice of the batch). The matched selection stays pending (other calls may
    still report for it, e.g. several reward functions); everything older is
    dropped, since batches are scored in the order they were drawn. Callers
    that score each selection once use `take`, which removes it as well.

    Args:
        maxlen: Most selections remembered; older ones are forgotten.
    """

    def __init__(self, maxlen: int = 256) -> None:
        self._items: collections.OrderedDict[int, Selection] = collections.OrderedDict()
        self._maxlen = maxlen
        self._lock = threading.Lock()

    def add(self, step: int, selection: Selection) -> None:
        """Records the selection drawn for ``step`` (a replayed step replaces its entry)."""
        with self._lock:
            self._items.pop(step, None)
            self._items[step] = selection
            while len(self._items) > self._maxlen:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def pending(self) -> list[tuple[int, Selection]]:
        """(step, selection) pairs still pending, oldest first."""
        with self._lock:
            return list(self._items.items())

    def get(self, step: int) -> Selection | None:
        """The selection recorded for ``step``, if still remembered."""
        with self._lock:
            return self._items.get(step)

    def match(self, keys: Sequence[str]) -> tuple[int, Selection] | None:
        """The oldest pending selection that ``keys`` (rollouts in batch order) can belong to.

        Returns:
            (step, selection), or None when no pending selection fits (e.g. an
            evaluation batch); older entries are dropped on a match.
        """
        distinct = list(dict.fromkeys(keys))
        if not distinct:
            return None
        with self._lock:
            for step, sel in self._items.items():
                if _is_contiguous_run(distinct, sel.keys):
                    while next(iter(self._items)) != step:
                        self._items.popitem(last=False)
                    return step, sel
        return None

    def take(self, keys: Sequence[str]) -> tuple[int, Selection] | None:
        """Like `match`, but the matched selection is removed too.

        For callers that see each selection exactly once (one reward call per
        rank and generation batch, as in TRL): a task selected again later
        then matches its new selection, never the older one.
        """
        found = self.match(keys)
        if found is not None:
            self.discard(found[0])
        return found

    def discard(self, step: int) -> None:
        """Forgets ``step`` (its rewards are all in)."""
        with self._lock:
            self._items.pop(step, None)


def _is_contiguous_run(distinct: Sequence[str], order: Sequence[str]) -> bool:
    try:
        start = order.index(distinct[0])
    except ValueError:
        return False
    return tuple(order[start : start + len(distinct)]) == tuple(distinct)
