"""Per-pool state: task table, Beta posteriors, capability coefficient; bytes round trip."""

from __future__ import annotations

import collections
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bots_core._config import PoolConfig
from bots_core._diagnostics import Diagnostics
from bots_core._errors import InvalidInputError, TaskConflictError, shorten
from bots_core._runs import RunState

FloatArray = npt.NDArray[np.float64]

MAX_KEY_BYTES = 512
ETR_WINDOW = 100
_MAGIC = b"BOTSPOOL\x01"


@dataclass(frozen=True)
class TaskSpec:
    """A task as registered: key, optional reference pass rates, prior.

    ``weak`` and ``strong`` are NaN when unknown.
    """

    key: str
    weak: float = math.nan
    strong: float = math.nan
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    def validate(self) -> None:
        """Raises InvalidInputError when the spec is malformed."""
        try:
            raw = self.key.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate would be accepted here but break to_bytes() later.
            raise InvalidInputError(f"task key {shorten(self.key)} is not valid UTF-8") from None
        if not self.key or len(raw) > MAX_KEY_BYTES:
            raise InvalidInputError(
                f"task key must be 1..{MAX_KEY_BYTES} UTF-8 bytes, got {len(raw)} bytes"
            )
        has_w, has_g = not math.isnan(self.weak), not math.isnan(self.strong)
        if has_w != has_g:
            raise InvalidInputError(
                f"task {shorten(self.key)}: weak and strong reference rates go together"
            )
        for name in ("weak", "strong"):
            v = getattr(self, name)
            if has_w and not (0.0 <= v <= 1.0):
                raise InvalidInputError(
                    f"task {shorten(self.key)}: {name} reference rate must be in [0, 1], got {v}"
                )
        for name in ("prior_alpha", "prior_beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 < v <= 1e9):
                raise InvalidInputError(
                    f"task {shorten(self.key)}: {name} must be in (0, 1e9], got {v}"
                )

    def same_as(self, other: TaskSpec) -> bool:
        """Equality that treats NaN reference rates as equal."""

        def eq(x: float, y: float) -> bool:
            return x == y or (math.isnan(x) and math.isnan(y))

        return (
            self.key == other.key
            and eq(self.weak, other.weak)
            and eq(self.strong, other.strong)
            and self.prior_alpha == other.prior_alpha
            and self.prior_beta == other.prior_beta
        )


class PoolState:
    """Everything the engine knows about one pool.

    Arrays are indexed by the dense task index (insertion order). ``weak`` and
    ``strong`` hold NaN for tasks without reference rates.
    """

    def __init__(self, name: str, config: PoolConfig) -> None:
        self.name = name
        self.config = config
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        empty = np.zeros(0, dtype=np.float64)
        self.alpha: FloatArray = empty.copy()
        self.beta: FloatArray = empty.copy()
        self.alpha0: FloatArray = empty.copy()
        self.beta0: FloatArray = empty.copy()
        self.weak: FloatArray = empty.copy()
        self.strong: FloatArray = empty.copy()
        self.capability = math.nan
        self.steps_applied = 0
        self.selections_opened = 0
        self.recent_etr: collections.deque[float] = collections.deque(maxlen=ETR_WINDOW)
        self.diagnostics = Diagnostics()
        self.runs: dict[str, RunState] = {}  # the runs that took steps (docs/algorithm.md §8)
        self._derived: _Derived | None = None

    # ----------------------------------------------------------------- tasks
    @property
    def task_count(self) -> int:
        """Number of tasks."""
        return len(self.keys)

    def task_spec(self, i: int) -> TaskSpec:
        """The registered spec of task ``i``."""
        return TaskSpec(
            self.keys[i],
            float(self.weak[i]),
            float(self.strong[i]),
            float(self.alpha0[i]),
            float(self.beta0[i]),
        )

    def plan_add(self, specs: Sequence[TaskSpec]) -> list[TaskSpec]:
        """Validates specs and returns those not yet in the pool, in order.

        Raises:
            InvalidInputError: a malformed spec or a key twice with different
                attributes in ``specs``.
            TaskConflictError: a key already in the pool with other attributes.
        """
        fresh: dict[str, TaskSpec] = {}
        for spec in specs:
            spec.validate()
            i = self.index.get(spec.key)
            if i is not None:
                if not self.task_spec(i).same_as(spec):
                    raise TaskConflictError(
                        f"task {shorten(spec.key)} already exists in pool {shorten(self.name)} "
                        "with different reference rates or prior"
                    )
                continue
            seen = fresh.get(spec.key)
            if seen is not None:
                if not seen.same_as(spec):
                    raise InvalidInputError(f"task {shorten(spec.key)} is given twice, differently")
                continue
            fresh[spec.key] = spec
        return list(fresh.values())

    def add_tasks(self, specs: Sequence[TaskSpec]) -> int:
        """Adds the specs not yet present (see :meth:`plan_add`); returns how many."""
        fresh = self.plan_add(specs)
        if fresh:
            self.extend_columns(
                [s.key for s in fresh],
                np.array([s.weak for s in fresh], dtype=np.float64),
                np.array([s.strong for s in fresh], dtype=np.float64),
                np.array([s.prior_alpha for s in fresh], dtype=np.float64),
                np.array([s.prior_beta for s in fresh], dtype=np.float64),
            )
        return len(fresh)

    def extend_columns(
        self,
        keys: Sequence[str],
        weak: FloatArray,
        strong: FloatArray,
        prior_alpha: FloatArray,
        prior_beta: FloatArray,
    ) -> None:
        """Appends already validated, new tasks as columns; posteriors start at the prior.

        This is the fast path for stores that rebuild a pool from columns they
        validated when the tasks were registered.
        """
        n0 = len(self.keys)
        for j, key in enumerate(keys):
            self.index[key] = n0 + j
        self.keys.extend(keys)
        self.alpha0 = np.concatenate([self.alpha0, prior_alpha])
        self.beta0 = np.concatenate([self.beta0, prior_beta])
        self.alpha = np.concatenate([self.alpha, prior_alpha])
        self.beta = np.concatenate([self.beta, prior_beta])
        self.weak = np.concatenate([self.weak, weak])
        self.strong = np.concatenate([self.strong, strong])
        self._derived = None

    # ------------------------------------------------------------ statistics
    def posterior_mean(self) -> FloatArray:
        """alpha / (alpha + beta) for every task."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def derived(self) -> _Derived:
        """Arrays derived from the task table, cached until tasks change."""
        if self._derived is None:
            self._derived = _Derived.build(self)
        return self._derived

    def record_etr(self, etr: float) -> None:
        """Keeps the effective task ratio of an applied step for the rolling mean."""
        if not math.isnan(etr):
            self.recent_etr.append(etr)

    @property
    def last_etr(self) -> float:
        """ETR of the latest step that evaluated tasks (NaN before any)."""
        return self.recent_etr[-1] if self.recent_etr else math.nan

    @property
    def rolling_etr(self) -> float:
        """Mean ETR over the last ``ETR_WINDOW`` steps (NaN before any)."""
        return math.fsum(self.recent_etr) / len(self.recent_etr) if self.recent_etr else math.nan

    # --------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        """Serialises the whole state (config included)."""
        header = {
            "name": self.name,
            "config": self.config.to_dict(),
            "n": self.task_count,
            "capability": None if math.isnan(self.capability) else self.capability,
            "steps_applied": self.steps_applied,
            "selections_opened": self.selections_opened,
            "recent_etr": list(self.recent_etr),
            "diagnostics": self.diagnostics.to_json(),
            "runs": {r: s.to_json() for r, s in self.runs.items()},
        }
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        key_bytes = [k.encode("utf-8") for k in self.keys]
        lengths = np.array([len(k) for k in key_bytes], dtype="<u4")
        arrays = [self.alpha, self.beta, self.alpha0, self.beta0, self.weak, self.strong]
        parts = [_MAGIC, struct.pack("<Q", len(hbytes)), hbytes, lengths.tobytes()]
        parts += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays]
        parts.append(b"".join(key_bytes))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> PoolState:
        """Inverse of :meth:`to_bytes`.

        Raises:
            InvalidInputError: ``data`` is not a whole serialised pool.
        """
        if not data.startswith(_MAGIC):
            raise InvalidInputError("not a serialised BOTS pool (bad magic)")
        try:
            return cls._decode(data)
        except InvalidInputError:
            raise
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            # Truncated or corrupt input; JSON and UTF-8 errors are ValueErrors.
            raise InvalidInputError(f"serialised pool is truncated or corrupt: {exc}") from None

    @classmethod
    def _decode(cls, data: bytes) -> PoolState:
        pos = len(_MAGIC)
        (hlen,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        header = json.loads(data[pos : pos + hlen])
        pos += hlen
        n = int(header["n"])
        state = cls(header["name"], PoolConfig.from_dict(header["config"]))
        lengths = np.frombuffer(data, dtype="<u4", count=n, offset=pos)
        pos += 4 * n
        arrays = []
        for _ in range(6):
            arrays.append(np.frombuffer(data, dtype="<f8", count=n, offset=pos).astype(np.float64))
            pos += 8 * n
        state.alpha, state.beta, state.alpha0, state.beta0, state.weak, state.strong = arrays
        blob = data[pos:]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        if int(offsets[-1]) != len(blob):
            raise InvalidInputError("serialised pool is truncated or corrupt")
        state.keys = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
        state.index = {k: i for i, k in enumerate(state.keys)}
        cap = header["capability"]
        state.capability = math.nan if cap is None else float(cap)
        state.steps_applied = int(header["steps_applied"])
        state.selections_opened = int(header["selections_opened"])
        state.recent_etr.extend(float(x) for x in header["recent_etr"])
        # Pools serialised before diagnostics existed load with empty ones.
        state.diagnostics = Diagnostics.from_json(header.get("diagnostics"))
        state.runs = {r: RunState.from_json(v) for r, v in header.get("runs", {}).items()}
        return state


@dataclass
class _Derived:
    """Per-task arrays the update needs, computed once per task-table version."""

    has_ref: npt.NDArray[np.bool_]
    weak0: FloatArray  # weak with 0 where unknown
    gap: FloatArray  # strong - weak with 0 where unknown
    ref_count: int
    uniform_prior: tuple[float, float] | None  # (alpha0, beta0) if shared by all tasks
    no_ref: npt.NDArray[np.int64]  # indices of the tasks without reference rates
    scratch: FloatArray  # a reusable work array of the pool's size (no page faults per step)

    @classmethod
    def build(cls, state: PoolState) -> _Derived:
        has_ref = ~np.isnan(state.weak)
        weak0 = np.where(has_ref, state.weak, 0.0)
        gap = np.where(has_ref, state.strong - state.weak, 0.0)
        prior: tuple[float, float] | None = None
        if state.task_count:
            a, b = float(state.alpha0[0]), float(state.beta0[0])
            if np.all(state.alpha0 == a) and np.all(state.beta0 == b):
                prior = (a, b)
        no_ref = np.flatnonzero(~has_ref).astype(np.int64)
        scratch = np.zeros(state.task_count)
        return cls(has_ref, weak0, gap, int(has_ref.sum()), prior, no_ref, scratch)
