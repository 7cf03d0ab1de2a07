"""TRL glue: a GRPOTrainer whose prompts come from the BOTS service and whose rewards are reported back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bots_client import SelectorClient
from torch.utils.data import Sampler
from trl import GRPOTrainer

from bots_adapters._ledger import SelectionLedger
from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._reporter import OutcomeReporter
from bots_adapters._torch_sampler import BotsBatchSampler

log = logging.getLogger("bots_adapters.trl")


class BotsRepeatSampler(Sampler[int]):
    """Drop-in for TRL's ``RepeatSampler`` whose chunks are BOTS selections.

    Each chunk of ``batch_size`` distinct prompts is one selection (one BOTS
    step of run ``run_id``); it is yielded ``repeat_count`` times, each index
    ``mini_repeat_count`` times in a row, exactly like ``RepeatSampler``. Every
    process of a distributed run iterates the same sampler and receives the
    same selections (the service deduplicates by run id and step), so the
    prompt groups line up across ranks as TRL requires.

    Args:
        client: Connected client.
        pool: Pool name.
        keys: Dataset index -> task key.
        mini_repeat_count: Rollouts per prompt (``num_generations``).
        batch_size: Distinct prompts per generation batch.
        repeat_count: How often a chunk is reused (``num_iterations * steps_per_generation``).
        run_id: Training run id (the same on every rank).
        steps_per_epoch: Chunks per epoch; default ``len(keys) // batch_size``.
        expected_trials: Trials each task reports in total; default ``mini_repeat_count``.
        ledger: Where drawn selections are recorded for the reward callback.
    """

    def __init__(
        self,
        client: SelectorClient,
        pool: str,
        keys: Sequence[str] | Mapping[str, int],
        *,
        mini_repeat_count: int,
        batch_size: int,
        repeat_count: int = 1,
        run_id: str,
        steps_per_epoch: int | None = None,
        start_step: int = 0,
        expected_trials: float | None = None,
        ledger: SelectionLedger | None = None,
    ) -> None:
        self.mini_repeat_count = mini_repeat_count
        self.repeat_count = repeat_count
        self.batches = BotsBatchSampler(
            client,
            pool,
            keys,
            batch_size,
            run_id=run_id,
            steps_per_epoch=steps_per_epoch,
            start_step=start_step,
            expected_trials=float(
                mini_repeat_count if expected_trials is None else expected_trials
            ),
        )
        if ledger is not None:
            self.batches.ledger = ledger
        self.ledger = self.batches.ledger

    def __iter__(self) -> Iterator[int]:
        for chunk in self.batches:
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        b = self.batches
        return len(b) * b.batch_size * self.mini_repeat_count * self.repeat_count

    def set_epoch(self, epoch: int) -> None:
        """See `BotsBatchSampler.set_epoch`."""
        self.batches.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """See `BotsBatchSampler.state_dict`."""
        return self.batches.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """See `BotsBatchSampler.load_state_dict`."""
        self.batches.load_state_dict(state)


class BotsRewardReporter:
    """Wraps a TRL reward function: returns its rewards unchanged and reports them per task.

    TRL calls reward functions with the completions of this process's share
    of a generation batch and every extra dataset column as a keyword
    argument; the task key column tells which task each completion belongs
    to. The rewards are grouped into (successes, trials) per task and sent,
    in the background, to the selection the batch came from (found in the
    ledger the sampler fills). Each rank sends its own share; the service adds
    the shares up and applies the BOTS step once all ``num_generations``
    rollouts of every task are in. Calls whose prompts belong to no recent
    selection (evaluation) are not reported and are counted in ``skipped``.

    Args:
        reward_fn: The reward function (TRL signature).
        reporter: Where reports go.
        ledger: The sampler's ledger.
        key_column: Dataset column holding the task key.
        rank: Process index, part of each request id.
    """

    def __init__(
        self,
        reward_fn: Callable[..., Sequence[float | None]],
        reporter: OutcomeReporter,
        ledger: SelectionLedger,
        *,
        key_column: str = "task_key",
        rank: int = 0,
    ) -> None:
        functools.update_wrapper(self, reward_fn)  # TRL names reward columns after __name__
        self.reward_fn = reward_fn
        self.reporter = reporter
        self.ledger = ledger
        self.key_column = key_column
        self.rank = rank
        self.calls = 0
        self.reported = 0
        self.skipped = 0

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        rewards = list(self.reward_fn(*args, **kwargs))
        keys = kwargs.get(self.key_column)
        if keys is None:
            raise KeyError(
                f"the reward function got no {self.key_column!r} column: add the task key to "
                "the dataset (and keep remove_unused_columns=False)"
            )
        self.calls += 1
        found = self.ledger.match([str(k) for k in keys])
        if found is None:
            self.skipped += 1
            return rewards
        step, sel = found
        outcomes = group_rewards(
            [str(k) for k in keys],
            [float("nan") if r is None else float(r) for r in rewards],
            mode=self.reporter.mode,
            threshold=self.reporter.threshold,
        )
        if outcomes:
            rid = f"{self.reporter.request_id_prefix}s{step}-r{self.rank}-c{self.calls}"
            self.reporter.report(outcomes, selection_id=sel.selection_id, request_id=rid)
            self.reported += 1
        return rewards


class BotsGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """A ``GRPOTrainer`` that selects prompts with BOTS and reports rewards to the service.

    Everything else is GRPOTrainer's. The dataset needs a column with each
    row's task key (``key_column``); the pool must hold those keys. The
    reward function at ``report_reward_index`` (the verifiable one) is wrapped
    by `BotsRewardReporter`; its rewards become evidence per ``reward_mode``.

    Args:
        *args: GRPOTrainer's positional arguments.
        bots_client: Connected client.
        bots_pool: Pool name.
        run_id: Run id, the same on every rank (e.g. the output dir's name).
        key_column: Dataset column holding the task key.
        reward_mode: ``"binary"``, ``"threshold"`` or ``"fraction"``.
        threshold: Success threshold for ``"threshold"``.
        report_reward_index: Which reward function's rewards are reported.
        reporter_kwargs: Extra `OutcomeReporter` arguments.
        **kwargs: GRPOTrainer's keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        bots_client: SelectorClient,
        bots_pool: str,
        run_id: str,
        key_column: str = "task_key",
        reward_mode: RewardMode | str = RewardMode.BINARY,
        threshold: float = 0.5,
        report_reward_index: int = 0,
        reporter_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.bots_client = bots_client
        self.bots_pool = bots_pool
        self.bots_run_id = run_id
        self.bots_key_column = key_column
        self.bots_ledger = SelectionLedger()
        self.bots_reporter = OutcomeReporter(
            bots_client,
            bots_pool,
            mode=reward_mode,
            threshold=threshold,
            request_id_prefix=f"{run_id}-",
            **dict(reporter_kwargs or {}),
        )
        positional = len(args) >= 2
        reward_funcs = args[1] if positional else kwargs.get("reward_funcs")
        if reward_funcs is None:
            raise TypeError("reward_funcs is required")
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not callable(funcs[report_reward_index]) or isinstance(funcs[report_reward_index], str):
            raise TypeError("the reported reward function must be a Python callable")
        self.bots_reward = BotsRewardReporter(
            funcs[report_reward_index], self.bots_reporter, self.bots_ledger, key_column=key_column
        )
        funcs[report_reward_index] = self.bots_reward
        if positional:
            args = (args[0], funcs, *args[2:])
        else:
            kwargs["reward_funcs"] = funcs
        super().__init__(*args, **kwargs)
        self.bots_reward.rank = self.accelerator.process_index

    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        if dataset is None:
            dataset = self.train_dataset
        if self.bots_key_column not in dataset.column_names:
            raise KeyError(f"the training dataset has no {self.bots_key_column!r} column")
        keys = [str(k) for k in dataset[self.bots_key_column]]
        return BotsRepeatSampler(
            self.bots_client,
            self.bots_pool,
            keys,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            run_id=self.bots_run_id,
            ledger=self.bots_ledger,
        )

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """GRPOTrainer.train, then waits until every report was delivered."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.bots_reporter.flush()

    def close_bots(self) -> None:
        """Flushes and stops the reporter (call once training is over)."""
        self.bots_reporter.close()
