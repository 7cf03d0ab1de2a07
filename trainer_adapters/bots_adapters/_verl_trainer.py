"""verl glue: a train sampler drawing BOTS selections and a RayPPOTrainer that reports per-prompt rewards."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bots_client import SelectorClient
from torch.utils.data import Sampler
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._reporter import OutcomeReporter
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
    ) -> None:
        self.batches = BotsBatchSampler(
            client,
            pool,
            keys,
            batch_size,
            run_id=run_id,
            steps_per_epoch=steps_per_epoch,
            expected_trials=float(rollouts),
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
    and reports them (in the background) to the step's selection. The driver
    sees the whole batch, so one report per step closes the selection.
    Steps without an actor update (critic warm-up) are not reported; their
    selections close when the wait window expires, as "not evaluated".

    Args:
        *args: RayPPOTrainer's positional arguments.
        bots_client: Connected client.
        bots_pool: Pool name.
        task_keys: Dataset index -> task key (default: `default_task_key` of each row).
        run_id: Run id; default ``trainer.experiment_name``.
        reward_mode: How a rollout's summed score becomes evidence.
        threshold: Success threshold for ``"threshold"``.
        task_key_fn: Row key extractor for reported batches.
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
        self.bots_reporter = OutcomeReporter(
            bots_client,
            bots_pool,
            mode=reward_mode,
            threshold=threshold,
            request_id_prefix=f"{self.bots_run_id}-",
        )
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
            )
        self.bots_sampler: BotsSampler = kwargs["train_sampler"]
        super().__init__(*args, **kwargs)

    def bots_report(self, batch: Any) -> str:
        """Reports one step's rollouts (a ``DataProto`` with ``token_level_scores``); returns the request id."""
        scores = batch.batch["token_level_scores"].sum(-1).tolist()
        keys = [self.bots_task_key_fn(batch.non_tensor_batch, i) for i in range(len(scores))]
        outcomes = group_rewards(
            keys, scores, mode=self.bots_reporter.mode, threshold=self.bots_reporter.threshold
        )
        found = _match_set(self.bots_sampler, {o.task_key for o in outcomes})
        if found is None:
            log.warning(
                "rewards of %d task(s) match no recent selection; not reported", len(outcomes)
            )
            return ""
        step, sel = found
        return self.bots_reporter.report(
            outcomes,
            selection_id=sel.selection_id,
            final=True,
            request_id=f"{self.bots_run_id}-s{step}",
        )

    def _update_actor(self, batch: Any) -> Any:
        self.bots_report(batch)
        return super()._update_actor(batch)

    def fit(self) -> Any:
        """RayPPOTrainer.fit, then waits until every report was delivered."""
        try:
            return super().fit()
        finally:
            self.bots_reporter.flush()


def _dataset_keys(dataset: Any) -> list[str]:
    keys = []
    for i in range(len(dataset)):
        row = dataset[i]
        keys.append(default_task_key({k: [v] for k, v in row.items()}, 0))
    return keys


def _match_set(sampler: BotsSampler, keys: set[str]) -> tuple[int, Any] | None:
    ledger = sampler.ledger
    for step, sel in ledger.pending():
        if set(sel.keys) == keys or (keys and keys <= set(sel.keys)):
            for old, _ in ledger.pending():
                if old == step:
                    break
                ledger.discard(old)
            ledger.discard(step)
            return step, sel
    return None
