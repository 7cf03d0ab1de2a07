"""The `bots` progress bar with a rate that reads well below one task a second, and an ETA."""

from __future__ import annotations

import time

from bots_server._progress import Progress


class EtaProgress(Progress):
    """`bots_server._progress.Progress` that also shows the time left at the current rate."""

    def render(self, now: float | None = None) -> str:
        """The bar's text: done/total, tasks/s and ETA."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label} {self.done} {self.unit}, {format_rate(rate)} {self.unit}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            filled = int(frac * self._WIDTH)
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
            text = (
                f"{self.label} [{bar}] {frac * 100:5.1f}% {self.done}/{self.total} {self.unit}, "
                f"{format_rate(rate)} {self.unit}/s, ETA {eta}"
            )
        return text


def format_rate(value: float) -> str:
    """``value`` with two significant decimals below 10 (model runs are often under 1/s)."""
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def format_duration(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS``."""
    total = max(0, round(seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"
