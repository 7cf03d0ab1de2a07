"""A Trinity-RFT data selector backed by the BOTS service (posteriors survive restarts)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bots_client import PoolConfig, SelectorClient, Task

from bots_adapters._ledger import SelectionLedger
from bots_adapters._reporter import OutcomeReporter

log = logging.getLogger("bots_adapters.trinity")

_STATE_VERSION = 1


def _get(config: Any, name: str, default: Any = None) -> Any:
    return (
        getattr(config, name, default)
        if not isinstance(config, Mapping)
        else config.get(name, default)
    )


class BotsSelector:
    """Trinity-RFT selector (``get_indices``/``feedback``/``state_dict``/``load_state_dict``).

    Use it from a Trinity config by dotted path::

        data_selector:
          selector_type: bots_adapters.trinity.BotsSelector
          feature_keys: [qwen2.5_7b_pass_rate, qwen3_30b_pass_rate]   # weak, strong
          kwargs: {target: "bots:50051", pool: math, run_id: exp-1, rollouts: 8}

    Trinity's own ``difficulty_based`` selector keeps its posteriors in
    memory and saves only ``current_index``, so a resumed run starts from a
    blank prior. Here the posteriors live in the service: a resume restores the
    step counter and finds every posterior where it was.

    ``kwargs`` (all optional but ``target``):
        target: ``host:port`` of the service.
        pool: Pool name (default ``"trinity"``).
        run_id: Run id; steps are deduplicated per run (default ``"trinity"``).
        rollouts: Rollouts per task (Trinity's ``repeat_times``; default 8);
            ``feedback`` values are mean rewards, turned into
            ``value * rollouts`` successes out of ``rollouts``.
        key_column: Dataset column holding a stable task key; default: the
            dataset index as a string.
        preset / pool_config: Used when the selector creates the pool.
        create_pool: Create the pool from the dataset if needed (default true).
        final_on_feedback: Close a selection when its feedback arrives
            (default true: Trinity reports a batch at once; tasks that got no
            rollouts count as not evaluated).
        token, timeout: Client settings.

    Args:
        data_source: Trinity's reader (``_HFBatchReader``): ``.dataset`` (a
            ``datasets.Dataset``) and ``.dataset_size``.
        config: Trinity's ``DataSelectorConfig`` (``feature_keys``, ``kwargs``, ``seed``).
    """

    def __init__(self, data_source: Any, config: Any) -> None:
        self.data_source = data_source
        self.config = config
        kwargs = dict(_get(config, "kwargs", None) or {})
        if "target" not in kwargs:
            raise ValueError("BotsSelector needs kwargs.target (host:port of the BOTS service)")
        self.pool = str(kwargs.get("pool", "trinity"))
        self.run_id = str(kwargs.get("run_id", "trinity"))
        self.rollouts = float(kwargs.get("rollouts", 8))
        self.final_on_feedback = bool(kwargs.get("final_on_feedback", True))
        dataset = data_source.dataset
        size = int(data_source.dataset_size)
        key_column = kwargs.get("key_column")
        if key_column:
            self.keys = [str(k) for k in dataset[key_column]]
        else:
            self.keys = [str(i) for i in range(size)]
        self.index_of = {k: i for i, k in enumerate(self.keys)}
        if len(self.index_of) != len(self.keys):
            raise ValueError(f"column {key_column!r} has repeated task keys")
        self.client = SelectorClient(
            str(kwargs["target"]),
            token=kwargs.get("token"),
            timeout=float(kwargs.get("timeout", 10)),
        )
        if kwargs.get("create_pool", True):
            self._create_pool(dataset, list(_get(config, "feature_keys", None) or []), kwargs)
        self.reporter = OutcomeReporter(
            self.client, self.pool, mode="fraction", request_id_prefix=f"{self.run_id}-"
        )
        self.ledger = SelectionLedger(maxlen=1024)
        self.current_step = 0
        self.current_index = 0

    def _create_pool(
        self, dataset: Any, feature_keys: Sequence[str], kwargs: Mapping[str, Any]
    ) -> None:
        if feature_keys and len(feature_keys) != 2:
            raise ValueError(
                f"feature_keys must name the weak and strong pass-rate columns, got {feature_keys}"
            )
        if feature_keys:
            weak, strong = (list(dataset[k]) for k in feature_keys)
            tasks = [
                Task(k, weak=float(w), strong=float(s)) for k, w, s in zip(self.keys, weak, strong)
            ]
        else:
            tasks = [Task(k) for k in self.keys]
        overrides = dict(kwargs.get("pool_config") or {})
        overrides.setdefault("pseudo_rollouts", self.rollouts)
        overrides.setdefault("seed", int(_get(self.config, "seed", 42)))
        self.client.create_pool(
            self.pool,
            tasks,
            preset=str(kwargs.get("preset", "bots")),
            config=PoolConfig.from_dict(overrides),
        )

    def get_indices(self, batch_size: int, return_extra_info: bool = False) -> Any:
        """Opens the next step's selection and returns its dataset indices."""
        step = self.current_step
        sel = self.client.select_batch(
            self.pool, batch_size, run_id=self.run_id, step=step, expected_trials=self.rollouts
        )
        self.ledger.add(step, sel)
        self.current_step += 1
        self.current_index += batch_size
        indices = [self.index_of[k] for k in sel.keys]
        if not return_extra_info:
            return indices
        extra = {
            "indices": indices,
            "selection_id": sel.selection_id,
            "step": step,
            "sampled_p": [t.sampled_p for t in sel.tasks],
            "point": [t.posterior_mean for t in sel.tasks],
        }
        return indices, extra

    def feedback(self, indices: Sequence[int], values: Sequence[float]) -> None:
        """Reports mean rewards of selected indices to the selections they came from (in the background)."""
        if len(indices) != len(values):
            raise ValueError(f"got {len(indices)} indices but {len(values)} values")
        left = {self.keys[int(i)]: float(v) for i, v in zip(indices, values)}
        pending = self.ledger.pending()
        # A batch's feedback normally covers one selection: prefer the oldest that holds
        # every index (the explorer may report a later step first, and steps may share
        # tasks); otherwise give each index to the oldest open selection holding it.
        whole = [(st, sel) for st, sel in pending if set(left) <= set(sel.keys)][:1]
        for step, sel in whole or pending:
            mine = {k: left.pop(k) for k in sel.keys if k in left}
            if not mine:
                continue
            outcomes = [
                (k, min(max(v, 0.0), 1.0) * self.rollouts, self.rollouts) for k, v in mine.items()
            ]
            self.reporter.report(
                outcomes,
                selection_id=sel.selection_id,
                final=self.final_on_feedback,
                request_id=f"{self.run_id}-fb{step}-{len(outcomes)}",
            )
            if self.final_on_feedback:
                self.ledger.discard(step)
            if not left:
                break
        if left:
            log.warning("feedback for %d task(s) outside any pending selection; ignored", len(left))

    def state_dict(self) -> dict[str, Any]:
        """Step counter and pending selections; waits until reports are delivered first."""
        self.reporter.flush()
        return {
            "version": _STATE_VERSION,
            "current_index": self.current_index,
            "current_step": self.current_step,
            "run_id": self.run_id,
            "pool": self.pool,
            "pending": [
                [step, sel.selection_id, list(sel.keys)] for step, sel in self.ledger.pending()
            ],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continues after the last step drawn before the checkpoint."""
        if state_dict.get("version") != _STATE_VERSION:
            # A state from another selector (e.g. Trinity's own): keep only the position.
            self.current_index = int(state_dict.get("current_index", 0))
            return
        if state_dict["run_id"] != self.run_id or state_dict["pool"] != self.pool:
            raise ValueError("selector state belongs to another run or pool")
        self.current_index = int(state_dict["current_index"])
        self.current_step = int(state_dict["current_step"])
        for step, _sid, _keys in state_dict.get("pending", []):
            # Replaying the (run, step) returns the same open selection from the service.
            self.ledger.add(
                int(step),
                self.client.select_batch(
                    self.pool,
                    len(_keys),
                    run_id=self.run_id,
                    step=int(step),
                    expected_trials=self.rollouts,
                ),
            )

    def close(self) -> None:
        """Flushes reports and closes the connection."""
        try:
            self.reporter.close()
        finally:
            self.client.close()
