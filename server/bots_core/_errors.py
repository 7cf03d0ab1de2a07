"""Errors raised by the BOTS engine.

BotsCoreError
├── InvalidInputError   malformed input, whatever the state (NaN, s > t, ...)
├── UnknownTaskError    a task key that the pool does not hold
├── TaskConflictError   a key registered again with different attributes
└── CorruptStateError   a state that cannot be computed on (e.g. a non-finite posterior)
"""

from __future__ import annotations


def shorten(value: object, limit: int = 64) -> str:
    """A caller value quoted for an error message, at most ``limit`` characters of it.

    Callers can send keys and names of any length; echoing them whole would
    make an error message (and the gRPC status carrying it) arbitrarily large.
    Longer values keep their first ``limit`` characters followed by
    ``…(N chars)``, so the reader still knows how long the value was.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} chars)"


class BotsCoreError(Exception):
    """Base class of every error the engine raises."""


class InvalidInputError(BotsCoreError, ValueError):
    """Input that is malformed regardless of the pool's state."""


class UnknownTaskError(BotsCoreError, KeyError):
    """A task key the pool does not hold."""

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "unknown task"


class TaskConflictError(BotsCoreError):
    """A task key registered again with different attributes."""


class CorruptStateError(BotsCoreError):
    """A pool state the engine refuses to compute on, such as a non-finite posterior."""
