"""The progress file of a measuring run: one JSON line per finished task, appended as it finishes.

The first line records the settings the results depend on; a run that finds
the file goes on with the tasks it does not list, and refuses to mix in
results made with other settings. A line cut short by a killed process is
dropped (and that task measured again), so every task is counted once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from bots_refs._errors import ProgressFileError

FORMAT = "bots-refs-progress/1"


@dataclass(frozen=True)
class TaskResult:
    """The rollouts of one task.

    Attributes:
        key: The task key.
        rewards: The reward of each rollout, in [0, 1].
    """

    key: str
    rewards: tuple[float, ...]

    @property
    def rate(self) -> float:
        """The pass rate: the mean reward (successes / n for 0/1 rewards)."""
        return math.fsum(self.rewards) / len(self.rewards)

    def to_json(self) -> dict[str, Any]:
        """The line written to the progress file."""
        return {"key": self.key, "rate": self.rate, "rewards": list(self.rewards)}


class ProgressFile:
    """Appends task results to ``path``; `load` returns those an earlier run left.

    Args:
        path: The progress file (created with a settings line if missing).
        settings: What the results depend on (model, reward, sampling, ...).
    """

    def __init__(self, path: str, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)
        self._file: TextIO | None = None

    def load(self) -> dict[str, TaskResult]:
        """The results already in the file, by key; cuts off a last line left half-written.

        Raises:
            ProgressFileError: The file was written with other settings, or a
                line other than the last is damaged.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ProgressFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        # Everything after the last newline is a line a killed run did not finish.
        complete, tail = lines[:-1], lines[-1]
        if tail:
            self._truncate(len(data) - len(tail))
        if not complete:
            return {}
        self._check_header(complete[0])
        results: dict[str, TaskResult] = {}
        for number, raw in enumerate(complete[1:], 2):
            if not raw.strip():
                continue
            result = self._parse(number, raw)
            results.setdefault(result.key, result)  # a key twice: the first one counts
        return results

    def _truncate(self, size: int) -> None:
        try:
            with open(self.path, "r+b") as f:
                f.truncate(size)
        except OSError as exc:
            raise ProgressFileError(f"cannot repair {self.path}: {exc.strerror or exc}") from None

    def _check_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ProgressFileError(
                f"{self.path}:1: not a bots refs progress file (expected format {FORMAT})"
            )
        theirs = header.get("settings", {})
        diffs = [
            f"{name} {self.settings.get(name)!r} here, {theirs.get(name)!r} there"
            for name in sorted(set(self.settings) | set(theirs))
            if self.settings.get(name) != theirs.get(name)
        ]
        if diffs:
            raise ProgressFileError(
                f"{self.path} holds results made with other settings ({'; '.join(diffs[:3])}): "
                "delete it to start over, or choose another --progress-file"
            )

    def _parse(self, number: int, raw: bytes) -> TaskResult:
        try:
            obj = json.loads(raw)
            rewards = tuple(float(r) for r in obj["rewards"])
            key = obj["key"]
            if not isinstance(key, str) or not rewards:
                raise ValueError("empty")
            if not all(0.0 <= r <= 1.0 for r in rewards):
                raise ValueError("reward outside [0, 1]")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ProgressFileError(f"{self.path}:{number}: damaged line ({exc})") from None
        if len(rewards) != self.settings.get("n", len(rewards)):
            raise ProgressFileError(
                f"{self.path}:{number}: task {key!r} has {len(rewards)} rollouts, "
                f"not {self.settings.get('n')}"
            )
        return TaskResult(key=key, rewards=rewards)

    def append(self, results: Sequence[TaskResult]) -> None:
        """Writes ``results`` and flushes them to the OS (they survive the process being killed)."""
        if self._file is None:
            new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
            try:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            except OSError as exc:
                raise ProgressFileError(
                    f"cannot write {self.path}: {exc.strerror or exc}"
                ) from None
            if new:
                header = {"format": FORMAT, "settings": self.settings}
                self._file.write(json.dumps(header, sort_keys=True) + "\n")
        self._file.write("".join(json.dumps(r.to_json()) + "\n" for r in results))
        self._file.flush()

    def sync(self) -> None:
        """Forces what was written to disk (against a machine crash, not just a killed process)."""
        if self._file is not None:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Syncs and closes the file."""
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> ProgressFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
