"""Errors raised by bots_refs; each says in one line what is wrong and where.

RefsError                  (a bots_server CliError: `bots refs` prints it and exits 2)
├── TaskFileError          a malformed task or result file line (path:line: ...)
├── RewardSpecError        a --reward that names no importable callable
├── RewardError            the reward function raised, or returned a bad value, for a task
└── ProgressFileError      a progress file that belongs to other settings or is damaged
"""

from __future__ import annotations

from bots_server._files import UsageError


def shorten(value: object, limit: int = 64) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters (tasks and answers can be long)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} chars)"


class RefsError(UsageError):
    """Base class of every error bots_refs raises."""


class TaskFileError(RefsError):
    """A malformed line of a task or result file."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


class RewardSpecError(RefsError):
    """A reward given as ``module:callable`` that cannot be imported or is not callable."""


class RewardError(RefsError):
    """The reward function failed for one task: it raised, or returned a value outside [0, 1]."""

    def __init__(self, task_key: str, message: str) -> None:
        super().__init__(f"task {shorten(task_key)}: {message}")
        self.task_key = task_key


class ProgressFileError(RefsError):
    """A progress file written with other settings, or damaged beyond its last line."""
