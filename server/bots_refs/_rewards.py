"""Reward functions: the built-ins, loading one from ``module:callable``, and checking its values."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from bots_refs._errors import RewardError, RewardSpecError, shorten

RewardFn = Callable[..., Any]
"""``reward(completion, **fields) -> float | bool`` in [0, 1]; ``fields`` are the task's
fields other than ``key``, ``prompt`` and the pool columns (``answer`` and any others)."""

DEFAULT_TOLERANCE = 1e-6

# A number as models write it: sign, thousands separators, decimals, exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def exact_match(completion: str, answer: Any = None, **_: Any) -> float:
    """1.0 when the completion equals the answer, ignoring surrounding whitespace.

    Raises:
        ValueError: The task has no ``answer``.
    """
    if answer is None:
        raise ValueError("exact_match needs an 'answer' field")
    return 1.0 if completion.strip() == str(answer).strip() else 0.0


def last_number(text: str) -> float | None:
    """The last number in ``text`` (inside the last ``\\boxed{...}`` if there is one), or None."""
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    found = [m for m in _NUMBER.findall(text) if any(c.isdigit() for c in m)]
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:  # e.g. "1e" cut short: not a number after all
        return None


def _answer_number(answer: Any) -> float:
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
        raise ValueError(f"numeric needs a number as 'answer', got {shorten(answer)}")
    if isinstance(answer, str):
        text = answer.strip().replace(",", "")
        try:
            return float(Fraction(text))  # also "3/4"
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"numeric needs a number as 'answer', got {shorten(answer)}") from None
    return float(answer)


def numeric(
    completion: str, answer: Any = None, tolerance: float = DEFAULT_TOLERANCE, **_: Any
) -> float:
    """1.0 when the last number in the completion is within ``tolerance`` of the answer.

    The tolerance is relative for answers larger than 1 in magnitude, absolute
    below; a task may set its own with a ``tolerance`` field. The number is
    taken from the last ``\\boxed{...}`` when the completion has one.

    Raises:
        ValueError: The task has no numeric ``answer``.
    """
    if answer is None:
        raise ValueError("numeric needs an 'answer' field")
    target = _answer_number(answer)
    got = last_number(completion)
    if got is None:
        return 0.0
    return 1.0 if abs(got - target) <= float(tolerance) * max(1.0, abs(target)) else 0.0


BUILTINS: Mapping[str, RewardFn] = {"exact_match": exact_match, "numeric": numeric}


def load_reward(spec: str) -> RewardFn:
    """The reward function named by ``spec``.

    ``spec`` is a built-in name (``exact_match``, ``numeric``), ``module:callable``,
    ``module.callable`` or ``path/to/file.py:callable``. Modules are imported from
    the current directory first, then from the Python path.

    Raises:
        RewardSpecError: Nothing callable is found under that name.
    """
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" in spec:
        module_name, _, attr = spec.rpartition(":")
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
    else:
        raise RewardSpecError(
            f"unknown reward {shorten(spec)}: use {', '.join(BUILTINS)} or module:callable"
        )
    if not module_name or not attr:
        raise RewardSpecError(f"reward {shorten(spec)} is not of the form module:callable")
    module = _import(spec, module_name)
    fn = module
    for part in attr.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise RewardSpecError(
                f"reward {shorten(spec)}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(fn):
        raise RewardSpecError(f"reward {shorten(spec)}: {attr!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _import(spec: str, module_name: str) -> Any:
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise RewardSpecError(f"reward {shorten(spec)}: no file {module_name!r}")
        name = "bots_refs_reward_" + re.sub(r"\W", "_", os.path.abspath(module_name))
        loader_spec = importlib.util.spec_from_file_location(name, module_name)
        if loader_spec is None or loader_spec.loader is None:
            raise RewardSpecError(f"reward {shorten(spec)}: cannot load {module_name!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # `bots` as a console script does not have the current directory on its path
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise RewardSpecError(
                f"reward {shorten(spec)}: no module named {module_name!r}"
            ) from None
        raise RewardSpecError(
            f"reward {shorten(spec)}: importing {module_name!r} failed: {exc}"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)


def score(reward: RewardFn, key: str, completion: str, fields: Mapping[str, Any]) -> float:
    """``reward(completion, **fields)`` as a float in [0, 1] (a bool counts as 0 or 1).

    Raises:
        RewardError: The function raised an exception (``KeyboardInterrupt`` and
            other non-``Exception`` errors pass through), or returned something
            that is not a finite number in [0, 1]; the message names the task.
    """
    try:
        value = reward(completion, **fields)
    except Exception as exc:
        raise RewardError(
            key, f"the reward function raised {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardError(
            key, f"the reward function returned {shorten(value, 32)}, not a number"
        ) from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RewardError(key, f"the reward function returned {number!r}, outside [0, 1]")
    return number


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + "…" if len(text) > 200 else text
