"""A durable, bounded file of outcome reports the service could not take yet, replayed later."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from bots_client import Outcome


class SpoolFullError(RuntimeError):
    """The report spool reached its disk budget (``spool_max_bytes``); evidence cannot be kept."""


@dataclasses.dataclass(frozen=True)
class SpooledReport:
    """One report kept on disk until the service acknowledges it.

    Attributes:
        request_id: The report's original idempotency key (replayed unchanged).
        outcomes: The evidence.
        selection_id: The selection it was meant for ("" = standalone).
        final: Whether it was to close its selection.
    """

    request_id: str
    outcomes: tuple[Outcome, ...]
    selection_id: str
    final: bool

    def to_json(self) -> str:
        return json.dumps(
            {
                "rid": self.request_id,
                "sel": self.selection_id,
                "final": self.final,
                "o": [[o.task_key, o.successes, o.trials] for o in self.outcomes],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SpooledReport:
        rows = data["o"]
        assert isinstance(rows, list)
        return cls(
            str(data["rid"]),
            tuple(Outcome(str(k), float(s), float(t)) for k, s, t in rows),
            str(data["sel"]),
            bool(data["final"]),
        )


class ReportSpool:
    """An append-only JSON-lines file of reports and of the request ids done since.

    Each line is either a report (``{"rid", "sel", "final", "o"}``) or an
    acknowledgement (``{"done": rid}``); every append is flushed and fsynced,
    so a report written here survives a crash of the trainer. `pending` is
    the reports without an acknowledgement, in the order they were written.
    When nothing is pending the file is truncated. A process reopening the
    same path finds what an earlier one left behind.

    Args:
        path: The spool file (its folder is created).
        max_bytes: Disk budget; an append past it raises `SpoolFullError`.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes < 1024:
            raise ValueError(f"spool_max_bytes must be >= 1024, got {max_bytes}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, SpooledReport] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write: that report was never acked
                if "done" in data:
                    self._pending.pop(str(data["done"]), None)
                else:
                    rep = SpooledReport.from_json(data)
                    self._pending[rep.request_id] = rep

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending(self) -> list[SpooledReport]:
        """Reports not yet acknowledged, oldest first."""
        with self._lock:
            return list(self._pending.values())

    def add(self, report: SpooledReport) -> None:
        """Writes ``report`` durably (a request id already pending is not written twice).

        Raises:
            SpoolFullError: The file would exceed ``max_bytes``.
        """
        line = report.to_json() + "\n"
        with self._lock:
            if report.request_id in self._pending:
                return
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(line) > self.max_bytes:
                raise SpoolFullError(
                    f"the report spool {self.path} reached its budget of {self.max_bytes} bytes "
                    f"with {len(self._pending)} undelivered report(s) while the selector service "
                    "is unreachable; raise spool_max_bytes or bring the service back"
                )
            self._append(line)
            self._pending[report.request_id] = report

    def done(self, request_ids: Sequence[str]) -> None:
        """Acknowledges reports the service has taken; truncates the file when none is left."""
        with self._lock:
            ids = [r for r in request_ids if r in self._pending]
            if not ids:
                return
            for r in ids:
                del self._pending[r]
            if not self._pending:
                with open(self.path, "w", encoding="utf-8") as fh:
                    fh.flush()
                    os.fsync(fh.fileno())
                return
            self._append("".join(json.dumps({"done": r}) + "\n" for r in ids))

    def _append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
