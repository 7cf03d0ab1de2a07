"""verl glue: a train sampler drawing BOTS selections and a RayPPOTrainer that reports per-prompt rewards."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bots_client import Selection, SelectorClient
from torch.utils.data import Sampler
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from bots_adapters._ledger import SelectionLedger
from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._reporter import KEEP_TRAINING, OutcomeReporter
from bots_adapters._torch_sampler import BotsBatchSampler

log = logging.getLogger("bots_adapters.verl")


class BotsSampler(Sampler[int]):
    """An index sampler for verl's ``StatefulDataLoader(batch_size=train_batch_size, sampler=...)``.

    Each run of ``batch_size`` consecutive indices is one BOTS selection (one
    training step). verl (>= 0.8) has no sampler plug-in in its config any
    more; pass this as ``RayPPOTrainer(train_sampler=...)``. verl saves the
    data loader's state in its checkpoints; the loader asks this sampler for
    ``state_dict``, so a resumed run continues at the next step.

    Args:
        client: Connected client.
        pool: Pool name.
        keys: Dataset index -> task key.
        batch_size: ``data.train_batch_size`` (prompts per step).
        run_id: Run id (e.g. ``trainer.experiment_name``).
        rollouts: Rollouts per prompt (``actor_rollout_ref.rollout.n``).
        steps_per_epoch: Steps per epoch; default ``len(keys) // batch_size``.
        **sampler_kwargs: `BotsBatchSampler` outage options (``on_outage``, ``reporter``,
            ``probe_interval``).
    """

    def __init__(
        self,
        client: SelectorClient,
        pool: str,
        keys: Sequence[str] | Mapping[str, int],
        batch_size: int,
        *,
        run_id: str,
        rollouts: int,
        steps_per_epoch: int | None = None,
        **sampler_kwargs: Any,
    ) -> None:
        self.batches = BotsBatchSampler(
            client,
            pool,
            keys,
            batch_size,
            run_id=run_id,
            steps_per_epoch=steps_per_epoch,
            expected_trials=float(rollouts),
            **sampler_kwargs,
        )
        self.ledger = self.batches.ledger

    def __iter__(self) -> Iterator[int]:
        for chunk in self.batches:
            yield from chunk

    def __len__(self) -> int:
        return len(self.batches) * self.batches.batch_size

    def state_dict(self) -> dict[str, Any]:
        """See `BotsBatchSampler.state_dict`."""
        return self.batches.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """See `BotsBatchSampler.load_state_dict`."""
        self.batches.load_state_dict(state)


def default_task_key(non_tensor_batch: Mapping[str, Any], i: int) -> str:
    """Row ``i``'s task key: a ``task_key`` column, else ``extra_info["task_key"]`` or ``["index"]``."""
    if "task_key" in non_tensor_batch:
        return str(non_tensor_batch["task_key"][i])
    info = non_tensor_batch["extra_info"][i]
    return str(info["task_key"] if "task_key" in info else info["index"])


class BotsRayPPOTrainer(RayPPOTrainer):  # type: ignore[misc]
    """``RayPPOTrainer`` with BOTS selection and per-step reporting of per-prompt rewards.

    Builds a `BotsSampler` over ``train_dataset`` (unless a ``train_sampler``
    is given) and, each step, right before the actor update, sums each
    rollout's ``token_level_scores`` into one reward, groups them by task
    and reports them (in the background) to the selection(s) the rows came
    from (`bots_report`). Steps without an actor update (critic warm-up) are
    not reported; their selections close when the wait window expires.

    **Dynamic sampling (DAPO ``filter_groups``).** A DAPO trainer drops the
    groups whose rollouts all succeeded or all failed, exactly the evidence
    BOTS needs, and concatenates several draws into one update batch. Call
    ``self.bots_report(batch)`` on each draw right after its rewards are
    computed and before filtering (one line in the DAPO trainer's ``fit``):
    that draw's selection is then reported in full and closed, and the
    update-time report skips it. Without that call, the update-time report
    still splits a concatenated batch into its draws (rows in draw order, one
    ``uid`` per prompt) and reports what survived filtering.

    **Outages** (``on_outage``): see `OutcomeReporter` and `BotsBatchSampler`.

    Args:
        *args: RayPPOTrainer's positional arguments.
        bots_client: Connected client.
        bots_pool: Pool name.
        task_keys: Dataset index -> task key (default: `default_task_key` of each row).
        run_id: Run id; default ``trainer.experiment_name``.
        reward_mode: How a rollout's summed score becomes evidence.
        threshold: Success threshold for ``"threshold"``.
        task_key_fn: Row key extractor for reported batches.
        on_outage: ``"keep_training"`` or ``"fail_fast"``.
        reporter_kwargs: Extra `OutcomeReporter` arguments (e.g. ``spool_path``).
        **kwargs: RayPPOTrainer's keyword arguments (``train_dataset`` is required).
    """

    def __init__(
        self,
        *args: Any,
        bots_client: SelectorClient,
        bots_pool: str,
        task_keys: Sequence[str] | None = None,
        run_id: str | None = None,
        reward_mode: RewardMode | str = RewardMode.BINARY,
        threshold: float = 0.5,
        task_key_fn: Callable[[Mapping[str, Any], int], str] = default_task_key,
        on_outage: str = KEEP_TRAINING,
        reporter_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        config = kwargs.get("config", args[0] if args else None)
        if config is None:
            raise TypeError("BotsRayPPOTrainer needs the verl config")
        dataset = kwargs.get("train_dataset")
        self.bots_client = bots_client
        self.bots_pool = bots_pool
        self.bots_run_id = run_id or str(config.trainer.experiment_name)
        self.bots_task_key_fn = task_key_fn
        self.bots_session = uuid.uuid4().hex[:8]
        opts: dict[str, Any] = {
            "mode": reward_mode,
            "threshold": threshold,
            "request_id_prefix": f"{self.bots_run_id}-",
            "on_outage": on_outage,
        }
        opts.update(reporter_kwargs or {})
        self.bots_reporter = OutcomeReporter(bots_client, bots_pool, **opts)
        if kwargs.get("train_sampler") is None:
            if dataset is None:
                raise TypeError("pass train_dataset (or your own train_sampler)")
            keys = list(task_keys) if task_keys is not None else _dataset_keys(dataset)
            kwargs["train_sampler"] = BotsSampler(
                bots_client,
                bots_pool,
                keys,
                int(config.data.get("gen_batch_size", None) or config.data.train_batch_size),
                run_id=self.bots_run_id,
                rollouts=int(config.actor_rollout_ref.rollout.n),
                on_outage=on_outage,
                reporter=self.bots_reporter,
            )
        self.bots_sampler: BotsSampler = kwargs["train_sampler"]
        super().__init__(*args, **kwargs)

    def bots_report(self, batch: Any) -> list[str]:
        """Reports the rollouts of a ``DataProto`` to the selections its rows came from.

        Each pending selection found in ``batch`` is reported once, with
        ``final=True`` (so it closes now) and removed from the ledger; rows
        of selections reported before (a draw reported ahead of DAPO
        filtering) or of no selection are left out.

        Args:
            batch: Rollouts with ``token_level_scores`` (or ``rm_scores``), task keys
                in ``non_tensor_batch`` and, for concatenated draws, verl's ``uid``.

        Returns:
            The request ids queued.
        """
        tensors = batch.batch
        # TensorDict refuses `in` on itself; its keys() view allows it.
        names = tensors.keys()
        name = "token_level_scores" if "token_level_scores" in names else "rm_scores"
        scores = tensors[name].sum(-1).tolist()
        nt = batch.non_tensor_batch
        keys = [self.bots_task_key_fn(nt, i) for i in range(len(scores))]
        uids = [str(u) for u in nt["uid"]] if "uid" in nt else None
        ledger = self.bots_sampler.ledger
        segments, left = split_by_selection(ledger, keys, uids)
        if left:
            log.info("%d rollout(s) belong to no pending selection; not reported", left)
        rids = []
        for step, sel, rows in segments:
            outcomes = group_rewards(
                [keys[r] for r in rows],
                [scores[r] for r in rows],
                mode=self.bots_reporter.mode,
                threshold=self.bots_reporter.threshold,
            )
            ledger.discard(step)
            if not outcomes:
                continue
            rids.append(
                self.bots_reporter.report(
                    outcomes,
                    selection_id=sel.selection_id,
                    final=bool(sel.selection_id),
                    request_id=f"{self.bots_run_id}-s{step}-{self.bots_session}",
                )
            )
        return rids

    def _update_actor(self, batch: Any) -> Any:
        self.bots_report(batch)
        return super()._update_actor(batch)

    def fit(self) -> Any:
        """RayPPOTrainer.fit, then waits until every report was delivered or spooled."""
        try:
            return super().fit()
        finally:
            self.bots_reporter.flush()


def split_by_selection(
    ledger: SelectionLedger, keys: Sequence[str], uids: Sequence[str] | None = None
) -> tuple[list[tuple[int, Selection, list[int]]], int]:
    """Splits rows (in draw order) into runs belonging to the pending selections, oldest first.

    A batch concatenated from several draws holds each draw's rows together,
    in the order drawn (filtering only removes rows): within a draw, tasks
    come in their selection's order and the rollouts of one prompt are
    contiguous. Each row goes to the current selection while its task
    belongs to it, under one uid per task when ``uids`` gives one per prompt.
    When a later pending selection holds the task too, the row stays only if
    its task comes after the task of the row before (or is that same task,
    same uid); otherwise it starts the next selection that holds it. So a
    task that two draws share is told apart even when the first draw's rows
    of it were all filtered out, and the rows of a single draw may be in any
    order (verl's ``balance_batch`` reorders them).

    Returns:
        ([(step, selection, row indices)], number of rows matching no selection).
    """
    pending = ledger.pending()
    where = [{k: i for i, k in enumerate(sel.keys)} for _, sel in pending]
    segments: list[tuple[int, Selection, list[int]]] = []
    pos = -1
    last = -1  # where the task of the row before stands in the current selection
    seen: dict[str, str] = {}
    left = 0
    for row, key in enumerate(keys):
        uid = uids[row] if uids is not None else ""
        if pos >= 0:
            at = where[pos].get(key)
            if at is not None and seen.get(key, uid) == uid:
                shared = any(key in where[j] for j in range(pos + 1, len(pending)))
                if not shared or (at > last and key not in seen) or at == last:
                    seen[key] = uid
                    last = at
                    segments[-1][2].append(row)
                    continue
        nxt = next((j for j in range(pos + 1, len(pending)) if key in where[j]), None)
        if nxt is None:
            left += 1
            continue
        pos, seen, last = nxt, {key: uid}, where[nxt][key]
        segments.append((pending[pos][0], pending[pos][1], [row]))
    return segments, left


def _dataset_keys(dataset: Any) -> list[str]:
    keys = []
    for i in range(len(dataset)):
        row = dataset[i]
        keys.append(default_task_key({k: [v] for k, v in row.items()}, 0))
    return keys
