"""Per-pool state: task table, Beta posteriors, capability coefficient; bytes round trip."""

from __future__ import annotations

import base64
import collections
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bots_core._config import PoolConfig
from bots_core._diagnostics import Diagnostics
from bots_core._embeddings import Codes, EmbeddingBasis
from bots_core._errors import CorruptStateError, InvalidInputError, TaskConflictError, shorten
from bots_core._keys import KeyIndex, KeyTable
from bots_core._runs import RunState

FloatArray = npt.NDArray[np.float64]

MAX_KEY_BYTES = 512
ETR_WINDOW = 100
_MAGIC = b"BOTSPOOL\x01"


@dataclass
class Lazy:
    """Forgetting and implicit evidence of recent steps, not yet written into every task.

    The posteriors are ``alpha = scale * a + prior * alpha0 + weak * w0 + gap * g
    + sim * qa`` and ``beta = scale * b + prior * beta0 + weak * r0 - gap * g +
    sim * qb``, where ``a`` and ``b`` are the stored columns, ``w0`` the weak
    reference rate, ``g`` the gap to the strong one and ``r0 = 1 - w0`` (all
    three 0 for tasks without rates), and ``qa``, ``qb`` the similarity
    estimator's per-task terms (``PoolState.sim_terms``; absent, and ``sim``
    0, in other pools). A step of Eq. 1 then changes five numbers and the rows
    of its own batch, not every task (docs/algorithm.md §2, "Cost of a step";
    docs/similarity.md for ``sim``). ``steps``
    counts the steps folded in since the columns were last written whole; the
    engine writes them whole again at fixed points of the step sequence, so the
    stored numbers, and every draw made from them, are a function of the pool's
    history alone.
    """

    scale: float = 1.0
    prior: float = 0.0
    weak: float = 0.0
    gap: float = 0.0
    steps: int = 0
    sim: float = 0.0

    @property
    def identity(self) -> bool:
        return (
            self.scale == 1.0
            and self.prior == 0.0
            and self.weak == 0.0
            and self.gap == 0.0
            and self.sim == 0.0
        )

    def coefficients(self) -> FloatArray:
        """(scale, prior, weak, gap, sim) as the compiled kernels take them."""
        return np.array([self.scale, self.prior, self.weak, self.gap, self.sim])

    def to_json(self) -> list[float]:
        """The numbers as JSON; ``sim`` only when not 0, so other pools' images read as before."""
        out = [self.scale, self.prior, self.weak, self.gap, float(self.steps)]
        if self.sim:
            out.append(self.sim)
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Lazy:
        """Inverse of :meth:`to_json`; ``None`` (older images) is the identity.

        Images written before the similarity term have five entries (``sim`` 0).
        """
        if raw is None:
            return cls()
        values = [float(x) for x in raw]
        if len(values) not in (5, 6):
            raise ValueError(f"lazy step coefficients: 5 or 6 numbers, got {len(values)}")
        scale, prior, weak, gap, steps = values[:5]
        sim = values[5] if len(values) == 6 else 0.0
        if not (math.isfinite(scale) and scale > 0.0) or not all(
            math.isfinite(x) for x in (prior, weak, gap, sim)
        ):
            raise ValueError("lazy step coefficients must be finite with a positive scale")
        return cls(scale, prior, weak, gap, int(steps), sim)


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
        self.keys = KeyTable()
        self._index: KeyIndex | None = None
        # Column buffers with spare capacity: growing a pool costs what it adds
        # (amortised), not a copy of the table. The public arrays are views.
        self._cols: dict[str, FloatArray] = {c: np.zeros(0) for c in _COLUMNS}
        self.capability = math.nan
        self.steps_applied = 0
        self.selections_opened = 0
        self.recent_etr: collections.deque[float] = collections.deque(maxlen=ETR_WINDOW)
        self.diagnostics = Diagnostics()
        self.runs: dict[str, RunState] = {}  # the runs that took steps (docs/algorithm.md §8)
        self._derived: _Derived | None = None
        self.lazy = Lazy()  # steps not yet written into every task (see Lazy)
        self._version = 0  # bumped by every change of the posteriors
        self._view: tuple[int, FloatArray, FloatArray] | None = None
        # Task embeddings (docs/similarity.md): none, or int8 codes for every task.
        self.embedding_basis: EmbeddingBasis | None = None
        self._codes: Codes = np.zeros(0, dtype=np.int8)  # rows one after the other, spare capacity
        # The similarity estimator's per-task terms of Lazy.sim, one row (qa, qb)
        # per task (a step reads both at once), with spare rows; None in pools
        # that do not fold that estimator's steps.
        self._sim: FloatArray | None = None

    # ------------------------------------------------------------ posteriors
    @property
    def alpha(self) -> FloatArray:
        """Posterior alpha of every task.

        The stored column itself while no step is pending in :attr:`lazy`
        (writable, as for a pool being set up); otherwise a read-only array
        computed once per change of the pool.
        """
        if self.lazy.identity:
            return self._cols["alpha"][: len(self.keys)]
        return self._materialized()[0]

    @alpha.setter
    def alpha(self, value: FloatArray) -> None:
        self.normalize()
        self._set("alpha", value)

    @property
    def beta(self) -> FloatArray:
        """Posterior beta of every task (see :attr:`alpha`)."""
        if self.lazy.identity:
            return self._cols["beta"][: len(self.keys)]
        return self._materialized()[1]

    @beta.setter
    def beta(self, value: FloatArray) -> None:
        self.normalize()
        self._set("beta", value)

    @property
    def stored_alpha(self) -> FloatArray:
        """The alpha column as stored: the posterior only together with :attr:`lazy`."""
        return self._cols["alpha"][: len(self.keys)]

    @property
    def stored_beta(self) -> FloatArray:
        """The beta column as stored (see :attr:`stored_alpha`)."""
        return self._cols["beta"][: len(self.keys)]

    def changed(self) -> None:
        """Marks the posteriors changed (drops the computed view)."""
        self._version += 1
        self._view = None

    def posterior_at(self, idx: npt.NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
        """(alpha, beta) of the tasks ``idx``: O(len(idx)), whatever the pool's size."""
        a, b = self.stored_alpha[idx], self.stored_beta[idx]
        lz = self.lazy
        if lz.identity:
            return a, b  # fancy indexing copied them
        d = self.derived
        q = self.sim_terms if lz.sim else None
        return (
            _combine(a, self.alpha0[idx], d.weak0[idx], d.gap[idx], lz, 1.0, _at(q, 0, idx)),
            _combine(b, self.beta0[idx], d.rest(idx), d.gap[idx], lz, -1.0, _at(q, 1, idx)),
        )

    def store_at(self, idx: npt.NDArray[np.int64], alpha: FloatArray, beta: FloatArray) -> None:
        """Sets the posteriors of the tasks ``idx`` (stored relative to :attr:`lazy`)."""
        from bots_core._select import kernel  # compiled; imported on first use

        kernel().store_batch(
            np.ascontiguousarray(idx, dtype=np.int64),
            np.ascontiguousarray(alpha, dtype=np.float64),
            np.ascontiguousarray(beta, dtype=np.float64),
            *self.kernel_rows(),
            self.lazy.coefficients(),
        )
        self.changed()

    def kernel_rows(
        self,
    ) -> tuple[
        FloatArray,
        FloatArray,
        FloatArray,
        FloatArray,
        FloatArray,
        npt.NDArray[np.bool_],
        FloatArray,
        FloatArray,
    ]:
        """The per-task columns the compiled step passes read, in their order.

        The last is the similarity terms (:attr:`sim_block`; empty when the pool has none).
        """
        d = self.derived
        q = self.sim_block
        if q is None:
            if self.lazy.sim:
                raise CorruptStateError(
                    f"pool {shorten(self.name)}: a similarity term is pending without its tasks' terms"
                )
            q = _NO_TERMS
        return (
            self.stored_alpha, self.stored_beta, self.alpha0, self.beta0,
            d.weak0, d.has_ref, d.gap, q,
        )  # fmt: skip

    # ------------------------------------------------------ similarity terms
    @property
    def sim_terms(self) -> tuple[FloatArray, FloatArray] | None:
        """(qa, qb) per task: what ``Lazy.sim`` multiplies (see :class:`Lazy`), or None."""
        if self._sim is None:
            return None
        n = len(self.keys)
        return self._sim[:n, 0], self._sim[:n, 1]

    @property
    def sim_block(self) -> FloatArray | None:
        """The similarity terms as the compiled kernels take them: (tasks, 2), C order."""
        return None if self._sim is None else self._sim[: len(self.keys)]

    def set_sim_terms(self, qa: FloatArray, qb: FloatArray) -> None:
        """Gives the pool its similarity terms, one pair per task.

        Either the pool has none yet (a pool just loaded: its pending ``Lazy.sim``
        then reads these), or nothing pending multiplies them.

        Raises:
            ValueError: wrong lengths, or terms in use would be replaced.
        """
        n = len(self.keys)
        if len(qa) != n or len(qb) != n:
            raise ValueError(f"similarity terms of {len(qa)}/{len(qb)} tasks for a pool of {n}")
        if self.lazy.sim and self._sim is not None:
            raise ValueError("a similarity term is pending: its terms cannot be replaced")
        self._sim = np.ascontiguousarray(np.stack([qa, qb], axis=1), dtype=np.float64)
        self.changed()

    def normalize(self) -> None:
        """Writes the pending steps into every task's columns (O(pool)); :attr:`lazy` is reset."""
        lz = self.lazy
        if lz.identity:
            lz.steps = 0
            return
        d = self.derived
        a, b = self.stored_alpha, self.stored_beta
        q = self.sim_terms if lz.sim else None
        block = 1 << 15
        for lo in range(0, len(a), block):
            hi = min(lo + block, len(a))
            g, sl = d.gap[lo:hi], slice(lo, hi)
            a[sl] = _combine(a[sl], self.alpha0[sl], d.weak0[sl], g, lz, 1.0, _at(q, 0, sl))
            b[sl] = _combine(b[sl], self.beta0[sl], d.rest(sl), g, lz, -1.0, _at(q, 1, sl))
        self.lazy = Lazy()
        self.changed()

    def _materialized(self) -> tuple[FloatArray, FloatArray]:
        view = self._view
        if view is not None and view[0] == self._version:
            return view[1], view[2]
        d, lz = self.derived, self.lazy
        q = self.sim_terms if lz.sim else None
        a = _combine(
            self.stored_alpha, self.alpha0, d.weak0, d.gap, lz, 1.0, _at(q, 0, slice(None))
        )
        b = _combine(
            self.stored_beta,
            self.beta0,
            d.rest(slice(None)),
            d.gap,
            lz,
            -1.0,
            _at(q, 1, slice(None)),
        )
        a.flags.writeable = False
        b.flags.writeable = False
        self._view = (self._version, a, b)
        return a, b

    @property
    def alpha0(self) -> FloatArray:
        return self._cols["alpha0"][: len(self.keys)]

    @alpha0.setter
    def alpha0(self, value: FloatArray) -> None:
        self._set("alpha0", value)

    @property
    def beta0(self) -> FloatArray:
        return self._cols["beta0"][: len(self.keys)]

    @beta0.setter
    def beta0(self, value: FloatArray) -> None:
        self._set("beta0", value)

    @property
    def weak(self) -> FloatArray:
        return self._cols["weak"][: len(self.keys)]

    @weak.setter
    def weak(self, value: FloatArray) -> None:
        self._set("weak", value)

    @property
    def strong(self) -> FloatArray:
        return self._cols["strong"][: len(self.keys)]

    @strong.setter
    def strong(self, value: FloatArray) -> None:
        self._set("strong", value)

    def _set(self, name: str, value: FloatArray) -> None:
        """Replaces a column (``state.alpha = array``); in-place ops on the view are kept."""
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != (len(self.keys),):
            raise ValueError(f"{name} must have shape ({len(self.keys)},), got {arr.shape}")
        buf = self._cols[name]
        if arr.base is buf and arr.ctypes.data == buf.ctypes.data:
            return  # ``state.alpha *= x``: the view of the buffer itself
        if name in ("weak", "strong", "alpha0", "beta0"):
            self.normalize()  # the pending steps were taken with the old columns
            self._derived = None
        self._cols[name] = np.ascontiguousarray(arr)
        self.changed()

    @property
    def embedding_codes(self) -> Codes | None:
        """(N, d) int8 embedding codes of every task, or None for a pool without embeddings."""
        b = self.embedding_basis
        if b is None:
            return None
        return self._codes[: len(self.keys) * b.dim].reshape(-1, b.dim)

    @property
    def index(self) -> KeyIndex:
        """Task key -> dense index, built on first use (a replica that only draws never needs it)."""
        if self._index is None:
            self._index = KeyIndex(self.keys)
        return self._index

    @index.setter
    def index(self, value: KeyIndex) -> None:
        self._index = value

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
        where = self.index.lookup([s.key for s in specs]) if len(self.keys) else None
        for j, spec in enumerate(specs):
            spec.validate()
            i = int(where[j]) if where is not None else -1
            if i >= 0:
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
        keys: Sequence[str],  # a KeyTable is taken without decoding it
        weak: FloatArray,
        strong: FloatArray,
        prior_alpha: FloatArray,
        prior_beta: FloatArray,
        codes: Codes | None = None,
    ) -> None:
        """Appends already validated, new tasks as columns; posteriors start at the prior.

        This is the fast path for stores that rebuild a pool from columns they
        validated when the tasks were registered. ``codes`` (rows of
        :attr:`embedding_basis`'s dimension) are required exactly when the pool
        has a basis.
        """
        n0 = len(self.keys)
        self._extend_codes(n0, len(keys), codes)
        if self._index is not None:
            self._index.add(n0, keys)
        alpha, beta = prior_alpha, prior_beta
        lz = self.lazy
        if not lz.identity:
            # Stored relative to the pending steps, so that the new tasks read as their prior.
            w0, r0, g = reference_terms(weak, strong)
            alpha = (prior_alpha - _offset(prior_alpha, w0, g, lz, 1.0)) / lz.scale
            beta = (prior_beta - _offset(prior_beta, r0, g, lz, -1.0)) / lz.scale
        for name, values in (
            ("alpha0", prior_alpha), ("beta0", prior_beta), ("alpha", alpha),
            ("beta", beta), ("weak", weak), ("strong", strong),
        ):  # fmt: skip
            self._cols[name] = _appended(self._cols[name], n0, values)
        if self._sim is not None:  # new tasks have no similarity terms yet
            need = n0 + len(keys)
            if len(self._sim) < need:
                grown = np.zeros((max(need, 2 * len(self._sim)), 2))
                grown[:n0] = self._sim[:n0]
                self._sim = grown
            else:
                self._sim[n0:need] = 0.0
        self.keys.extend(keys)
        if self._derived is not None:
            self._derived.extend(self, n0)
        self.changed()

    def set_embeddings(self, basis: EmbeddingBasis, codes: Codes) -> None:
        """Gives a pool without embeddings its basis and every task's codes (an import)."""
        if self.embedding_basis is not None:
            raise ValueError("the pool has embeddings already")
        self.embedding_basis = basis
        self._extend_codes(0, len(self.keys), codes)

    def _extend_codes(self, n0: int, m: int, codes: Codes | None) -> None:
        b = self.embedding_basis
        if (b is None) != (codes is None):
            raise ValueError("embedding codes are given exactly for a pool with a basis")
        if b is not None and codes is not None:
            if codes.shape != (m, b.dim):
                raise ValueError(f"embedding codes must have shape ({m}, {b.dim})")
            self._codes = _appended(self._codes, n0 * b.dim, codes.reshape(-1))

    @classmethod
    def from_columns(
        cls,
        name: str,
        config: PoolConfig,
        keys: Sequence[str],
        weak: FloatArray,
        strong: FloatArray,
        prior_alpha: FloatArray,
        prior_beta: FloatArray,
        alpha: FloatArray | None = None,
        beta: FloatArray | None = None,
        lazy: Lazy | None = None,
        codes: Codes | None = None,
        basis: EmbeddingBasis | None = None,
    ) -> PoolState:
        """A pool of already validated tasks, posteriors at the prior unless given (takes ``keys``).

        ``alpha`` and ``beta`` are the stored columns, relative to ``lazy`` when given.

        The fast way to load a whole table: no per-task work beyond the
        arrays, and the key index is built only when something looks a key up.
        """
        state = cls(name, config)
        n = len(keys)
        state.keys = keys if isinstance(keys, KeyTable) else KeyTable.of(keys)
        state._index = None
        # The read-only columns are taken as they are (no copy: they are never
        # written in place, and growing reallocates); the posteriors get their own.
        for col, values in (
            ("alpha0", prior_alpha), ("beta0", prior_beta), ("weak", weak), ("strong", strong),
        ):  # fmt: skip
            if len(values) != n:
                raise ValueError(f"column {col} has {len(values)} entries for {n} keys")
            state._cols[col] = np.ascontiguousarray(values, dtype=np.float64)
        state._cols["alpha"] = np.array(prior_alpha if alpha is None else alpha, dtype=np.float64)
        state._cols["beta"] = np.array(prior_beta if beta is None else beta, dtype=np.float64)
        if lazy is not None:
            state.lazy = lazy
        state.embedding_basis = basis
        state._extend_codes(0, n, codes)
        return state

    def trim(self) -> None:
        """Drops the spare capacity of the columns (after a pool was loaded whole)."""
        n = len(self.keys)
        for name, buf in self._cols.items():
            if len(buf) != n:
                self._cols[name] = buf[:n].copy()
        codes = self.embedding_codes
        if codes is not None and codes.size != len(self._codes):
            self._codes = codes.reshape(-1).copy()
        if self._sim is not None and len(self._sim) != n:
            self._sim = self._sim[:n].copy()

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
    def header(self) -> dict[str, Any]:
        """The pool-level fields of the state as JSON values (what :meth:`to_bytes` and checkpoints write)."""
        header: dict[str, Any] = {
            "name": self.name,
            "config": self.config.to_dict(),
            "n": self.task_count,
            "capability": None if math.isnan(self.capability) else self.capability,
            "steps_applied": self.steps_applied,
            "selections_opened": self.selections_opened,
            "recent_etr": list(self.recent_etr),
            "diagnostics": self.diagnostics.to_json(),
            "runs": {r: s.to_json() for r, s in self.runs.items()},
            "lazy": self.lazy.to_json(),
        }
        if self.embedding_basis is not None:
            header["embedding"] = base64.b64encode(self.embedding_basis.to_bytes()).decode()
        return header

    def to_bytes(self) -> bytes:
        """Serialises the whole state (config included; similarity terms too, as pending steps read them)."""
        header = self.header()
        q = self.sim_terms
        if q is not None:
            header["sim_terms"] = True
        codes = self.embedding_codes
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        blob, key_lengths = self.keys.to_bytes()
        lengths = key_lengths.astype("<u4")
        arrays = [
            self.stored_alpha, self.stored_beta, self.alpha0, self.beta0, self.weak, self.strong,
            *(q or ()),
        ]  # fmt: skip
        parts = [_MAGIC, struct.pack("<Q", len(hbytes)), hbytes, lengths.tobytes()]
        parts += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays]
        if codes is not None:
            parts.append(np.ascontiguousarray(codes).tobytes())
        parts.append(blob)
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
        for _ in range(8 if header.get("sim_terms") else 6):
            arrays.append(np.frombuffer(data, dtype="<f8", count=n, offset=pos).astype(np.float64))
            pos += 8 * n
        basis, codes = None, None
        if "embedding" in header:
            basis = EmbeddingBasis.from_bytes(base64.b64decode(header["embedding"]))
            codes = np.frombuffer(data, np.int8, n * basis.dim, pos).reshape(n, basis.dim)
            pos += n * basis.dim
        blob = data[pos:]
        if int(lengths.sum(dtype=np.int64)) != len(blob):
            raise InvalidInputError("serialised pool is truncated or corrupt")
        alpha, beta, alpha0, beta0, weak, strong = arrays[:6]
        state = cls.from_columns(
            state.name, state.config, KeyTable.from_bytes(blob, lengths), weak, strong, alpha0, beta0,
            alpha, beta, Lazy.from_json(header.get("lazy")), codes, basis,
        )  # fmt: skip
        if len(arrays) == 8:
            state.set_sim_terms(arrays[6], arrays[7])
        elif state.lazy.sim:
            raise InvalidInputError(
                "serialised pool has a pending similarity term without its terms"
            )
        cap = header["capability"]
        state.capability = math.nan if cap is None else float(cap)
        state.steps_applied = int(header["steps_applied"])
        state.selections_opened = int(header["selections_opened"])
        state.recent_etr.extend(float(x) for x in header["recent_etr"])
        # Pools serialised before diagnostics existed load with empty ones.
        state.diagnostics = Diagnostics.from_json(header.get("diagnostics"))
        state.runs = {r: RunState.from_json(v) for r, v in header.get("runs", {}).items()}
        return state


_COLUMNS = ("alpha", "beta", "alpha0", "beta0", "weak", "strong")


def reference_terms(
    weak: FloatArray, strong: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(w0, r0, g) of tasks: weak rate, 1 - weak rate and strong - weak, all 0 without rates."""
    has_ref = ~np.isnan(weak)
    w0 = np.where(has_ref, weak, 0.0)
    return w0, np.where(has_ref, 1.0 - w0, 0.0), np.where(has_ref, strong - weak, 0.0)


def _offset(
    prior: FloatArray, rate: FloatArray, gap: FloatArray, lz: Lazy, sign: float
) -> FloatArray:
    """What the pending steps add to a posterior: prior * p0 + weak * rate + sign * gap * g."""
    out = prior * lz.prior
    if lz.weak:
        out += rate * lz.weak
    if lz.gap:
        out += gap * (sign * lz.gap)
    return out


def _combine(
    stored: FloatArray,
    prior: FloatArray,
    rate: FloatArray,
    gap: FloatArray,
    lz: Lazy,
    sign: float,
    sim: FloatArray | None = None,
) -> FloatArray:
    """The posterior of stored columns under ``lz``, in the kernel's order of operations.

    ``(((scale * stored + prior * p0) + weak * rate) + sign * gap * g) + sim * q``,
    term by term left to right as ``bots_core._kernel`` computes it, so that
    both give the same bits. A zero coefficient adds exactly nothing and is
    skipped; ``sim`` (the tasks' qa or qb) is required when ``lz.sim`` is not 0.
    """
    out = stored * lz.scale
    if lz.prior:
        out += prior * lz.prior
    if lz.weak:
        out += rate * lz.weak
    if lz.gap:
        out += gap * (sign * lz.gap)
    if lz.sim:
        assert sim is not None
        out += sim * lz.sim
    return out


def _at(
    q: tuple[FloatArray, FloatArray] | None, side: int, sel: slice | npt.NDArray[np.int64]
) -> FloatArray | None:
    """qa (side 0) or qb (side 1) of the tasks ``sel``, None without terms."""
    return None if q is None else q[side][sel]


_NO_TERMS = np.zeros((0, 2))


def _appended(buf: npt.NDArray[Any], n: int, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``buf`` (its first ``n`` entries in use) with ``values`` written after them.

    Reallocates only when full, to at least twice the size: O(len(values)) amortised.
    """
    m = len(values)
    if n + m > len(buf):
        grown = np.empty(max(n + m, 2 * len(buf)), dtype=buf.dtype)
        grown[:n] = buf[:n]
        buf = grown
    buf[n : n + m] = values
    return buf


class _Derived:
    """Per-task arrays the update needs; grown with the table, rebuilt when a column is replaced."""

    def __init__(self) -> None:
        self._has_ref = np.zeros(0, dtype=bool)
        self._weak0 = np.zeros(0)
        self._gap = np.zeros(0)
        self._no_ref = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._n_no_ref = 0
        self.ref_count = 0
        self._prior: tuple[float, float] | None = None
        self.min_prior = math.inf  # smallest alpha0 or beta0 of any task
        self._mixed_prior = False
        self._scratch = np.zeros(0)
        self._clip_orders: dict[bool, tuple[FloatArray, npt.NDArray[np.int64]]] = {}

    @property
    def has_ref(self) -> npt.NDArray[np.bool_]:
        return self._has_ref[: self._n]

    @property
    def weak0(self) -> FloatArray:  # weak with 0 where unknown
        return self._weak0[: self._n]

    @property
    def gap(self) -> FloatArray:  # strong - weak with 0 where unknown
        return self._gap[: self._n]

    def rest(self, sel: slice | npt.NDArray[np.int64]) -> FloatArray:
        """1 - weak with 0 where unknown, for the tasks ``sel`` (computed, not stored)."""
        return np.where(self.has_ref[sel], 1.0 - self.weak0[sel], 0.0)

    @property
    def no_ref(self) -> npt.NDArray[np.int64]:  # tasks without rates
        return self._no_ref[: self._n_no_ref]

    @property
    def uniform_prior(self) -> tuple[float, float] | None:
        """(alpha0, beta0) if every task has that prior."""
        return None if self._mixed_prior else self._prior

    @property
    def scratch(self) -> FloatArray:
        """A reusable work array of the pool's size (no page faults per step)."""
        if len(self._scratch) < self._n:
            self._scratch = np.zeros(self._n + self._n // 2)
        return self._scratch[: self._n]

    def clip_candidates(self, cap: float) -> npt.NDArray[np.int64]:
        """Tasks whose interpolation ``w0 + cap g`` may leave [0, 1] (a superset; none in [0, 1]).

        With ``cap < 0`` these are tasks with ``g > 0`` and ``-w0 / g > cap``
        (below 0) or ``g < 0`` and ``r0 / g > cap`` (above 1); with ``cap > 1``,
        ``g > 0`` and ``r0 / g < cap`` or ``g < 0`` and ``-w0 / g < cap``. Each
        is a prefix of one order of the tasks by that bound, sorted once per
        change of the task table, so finding them costs O(log pool + found).
        """
        if 0.0 <= cap <= 1.0 or math.isnan(cap):
            return np.zeros(0, dtype=np.int64)
        high = cap > 1.0
        order = self._clip_orders.get(high)
        if order is None:
            g = self.gap
            with np.errstate(divide="ignore", invalid="ignore"):
                low_bound, high_bound = -self.weak0 / g, self.rest(slice(None)) / g
            # Bounds, negated where the test is "bound > cap", so every test reads "key < c".
            pos, neg = np.flatnonzero(g > 0.0), np.flatnonzero(g < 0.0)
            if high:
                keys = np.concatenate([high_bound[pos], low_bound[neg]])
            else:
                keys = -np.concatenate([low_bound[pos], high_bound[neg]])
            idx = np.concatenate([pos, neg])
            sort = np.argsort(keys, kind="stable")
            order = (keys[sort], idx[sort])
            self._clip_orders[high] = order
        keys, idx = order
        c = cap if high else -cap
        slack = 1e-9 * (1.0 + abs(c))  # rounding of the bounds; the caller tests exactly
        return idx[: int(np.searchsorted(keys, c + slack, side="left"))]

    @classmethod
    def build(cls, state: PoolState) -> _Derived:
        d = cls()
        d.extend(state, 0)
        return d

    def extend(self, state: PoolState, n0: int) -> None:
        """Adds tasks ``n0:`` of ``state`` (the tasks before are already in)."""
        self._clip_orders = {}
        n = state.task_count
        weak, strong = state.weak[n0:], state.strong[n0:]
        has_ref = ~np.isnan(weak)
        w0, _, g = reference_terms(weak, strong)
        self._has_ref = _appended(self._has_ref, n0, has_ref)
        self._weak0 = _appended(self._weak0, n0, w0)
        self._gap = _appended(self._gap, n0, g)
        no_ref = np.flatnonzero(~has_ref).astype(np.int64) + n0
        self._no_ref = _appended(self._no_ref, self._n_no_ref, no_ref)
        self._n_no_ref += len(no_ref)
        self.ref_count += int(has_ref.sum())
        a0, b0 = state.alpha0[n0:], state.beta0[n0:]
        if len(a0):
            self.min_prior = min(self.min_prior, float(a0.min()), float(b0.min()))
        if len(a0) and not self._mixed_prior:
            if self._prior is None:
                self._prior = (float(a0[0]), float(b0[0]))
            a, b = self._prior
            self._mixed_prior = not (np.all(a0 == a) and np.all(b0 == b))
        self._n = n
