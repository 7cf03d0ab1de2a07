"""A small text progress bar for long CLI operations (stderr, redrawn in place)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """Counts work done towards a total and redraws one line at most ~10 times a second.

    Disabled bars cost one comparison per update, so callers need not branch.

    Args:
        label: Text before the bar.
        total: Units of work expected; None or 0 when unknown (no percentage).
        stream: Where to draw; stderr by default.
        enabled: Draw at all. None: only when ``stream`` is a terminal.
        unit: Name of the unit shown after the counts.
    """

    _WIDTH = 30
    _INTERVAL_S = 0.1

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        unit: str = "tasks",
    ) -> None:
        self.label = label
        self.total = total or None
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)
            enabled = bool(isatty()) if callable(isatty) else False
        self.enabled = enabled
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n: int) -> None:
        """Adds ``n`` units of work done."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self._INTERVAL_S:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        """Draws the final state and ends the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
            self.enabled = False

    def render(self, now: float | None = None) -> str:
        """The bar's text for the current state."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = f"{_human(self.done / elapsed)} {self.unit}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * self._WIDTH)
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            return (
                f"{self.label} [{bar}] {frac * 100:5.1f}% "
                f"{self.done}/{self.total} {self.unit}, {rate}"
            )
        return f"{self.label} {self.done} {self.unit}, {rate}"

    def _draw(self, now: float) -> None:
        # \r returns to the line start; \x1b[K clears what a longer line left.
        self._stream.write("\r" + self.render(now) + "\x1b[K")
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _human(value: float) -> str:
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"
