"""Progress of a long simulation on stderr: redrawn in place on a terminal, else periodic lines."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts units of work towards a total and shows the rate and time left.

    Args:
        label: Text in front of the counts.
        total: Units of work expected (> 0).
        stream: Where to write; stderr by default.
        enabled: False draws nothing; None or True draws (in place on a
            terminal, otherwise one line per tenth of the work).
    """

    _REDRAW_S = 0.2

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled is not False
        self._stream = stream if stream is not None else sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self._tty = bool(isatty()) if callable(isatty) else False
        self._start = time.monotonic()
        self._last = -1.0
        self._next_decile = 1

    def set_label(self, label: str) -> None:
        """Changes the text shown in front of the counts."""
        self.label = label

    def update(self, n: int) -> None:
        """Adds ``n`` units of work done."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if now - self._last >= self._REDRAW_S or self.done >= self.total:
                self._last = now
                self._stream.write("\r" + self.render(now) + "\x1b[K")
                self._stream.flush()
        elif self.done * 10 >= self._next_decile * self.total:
            self._next_decile = self.done * 10 // self.total + 1
            self._stream.write(self.render(now) + "\n")
            self._stream.flush()

    def render(self, now: float | None = None) -> str:
        """The progress line for the current state."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        frac = min(self.done / self.total, 1.0)
        left = elapsed * (1.0 - frac) / frac if frac > 0 else float("nan")
        left_text = _clock(left) if left == left else "?"
        return (
            f"[{frac * 100:5.1f}%] {self.label}: {self.done}/{self.total} steps, "
            f"{_clock(elapsed)} elapsed, ~{left_text} left"
        )

    def close(self) -> None:
        """Ends the in-place line."""
        if self.enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()
        self.enabled = False


def _clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}:{s % 60:02d}"
