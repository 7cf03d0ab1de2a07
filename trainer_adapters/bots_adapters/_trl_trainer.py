"""TRL glue: a GRPOTrainer whose prompts come from the BOTS service and whose rewards are reported back."""

from __future__ import annotations

import functools
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from bots_client import Selection, SelectorClient
from torch.utils.data import Sampler
from trl import GRPOTrainer

from bots_adapters._ledger import SelectionLedger
from bots_adapters._outcomes import RewardMode, group_rewards
from bots_adapters._reporter import KEEP_TRAINING, OutcomeReporter, check_outage_policy
from bots_adapters._torch_sampler import BotsBatchSampler

log = logging.getLogger("bots_adapters.trl")

COMBINED = "combined"


class BotsRepeatSampler(Sampler[int]):
    """Drop-in for TRL's ``RepeatSampler`` whose chunks are BOTS selections.

    Each chunk of ``batch_size`` distinct prompts is one selection (one BOTS
    step of run ``run_id``); it is yielded ``repeat_count`` times, each index
    ``mini_repeat_count`` times in a row, exactly like ``RepeatSampler``. Every
    process of a distributed run iterates the same sampler and receives the
    same selections (the service deduplicates by run id and step; with
    ``share`` only the leader asks and the others take its answer), so the
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
        start_step: Step number of the first chunk.
        expected_trials: Trials each task reports in total; default ``mini_repeat_count``.
        ledger: Where drawn selections are recorded for the reward callback.
        **sampler_kwargs: `BotsBatchSampler` outage and rank options (``on_outage``,
            ``reporter``, ``probe_interval``, ``share``, ``leader``).
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
        **sampler_kwargs: Any,
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
            **sampler_kwargs,
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


def reward_mode_error(
    err: ValueError, source: str, mode: RewardMode, threshold: float
) -> ValueError:
    """A ValueError that names the options to change when a reward does not fit ``mode``."""
    if mode is RewardMode.BINARY:
        hint = (
            "reward_mode='binary' takes rewards of exactly 0 or 1. For other rewards pass "
            "reward_mode='threshold' with threshold=T (a rollout succeeds when its reward is "
            f">= T; now {threshold}), or reward_mode='fraction' for rewards in [0, 1]"
        )
    elif mode is RewardMode.FRACTION:
        hint = (
            "reward_mode='fraction' takes rewards in [0, 1]; for rewards outside it pass "
            "reward_mode='threshold' with threshold=T (a reward >= T is a success)"
        )
    else:
        hint = "every reward must be a finite number"
    return ValueError(f"BOTS cannot turn the rewards of {source} into evidence: {err}. {hint}")


class BotsRewardReporter:
    """Wraps a TRL reward function: returns its rewards unchanged and reports them per task.

    For a plain ``GRPOTrainer`` with a `BotsRepeatSampler`; `BotsGRPOTrainer`
    reports from the gathered reward table instead and needs no wrapper.
    Each call (one per generation batch and rank) takes the oldest pending
    selection its prompts fit (see `SelectionLedger.take`) and reports the
    rank's share of rollouts to it. Calls whose prompts fit no pending
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
        self.session = uuid.uuid4().hex[:8]
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
        found = self.ledger.take([str(k) for k in keys])
        if found is None:
            self.skipped += 1
            return rewards
        step, sel = found
        values = [math.nan if r is None else float(r) for r in rewards]
        name = getattr(self.reward_fn, "__name__", "the reward function")
        if _report_share(
            self.reporter, [str(k) for k in keys], values, step, sel, self.rank, self.session, name
        ):
            self.reported += 1
        return rewards


def _report_share(
    reporter: OutcomeReporter,
    keys: Sequence[str],
    rewards: Sequence[float],
    step: int,
    sel: Selection,
    rank: int,
    session: str,
    source: str,
) -> bool:
    try:
        outcomes = group_rewards(keys, rewards, mode=reporter.mode, threshold=reporter.threshold)
    except ValueError as err:
        raise reward_mode_error(err, source, reporter.mode, reporter.threshold) from None
    if not outcomes:
        return False
    # One report per (step, rank) and trainer session: retries and spool replays reuse it; a
    # resumed run regenerating a step sends new rollouts under a new id.
    rid = f"{reporter.request_id_prefix}s{step}-r{rank}-{session}"
    reporter.report(outcomes, selection_id=sel.selection_id, request_id=rid)
    return True


class BotsGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """A ``GRPOTrainer`` that selects prompts with BOTS and reports rewards to the service.

    Everything else is GRPOTrainer's. The dataset needs a column with each
    row's task key (``key_column``); the pool must hold those keys.

    **Which reward becomes evidence.** ``report_reward`` picks it: an index
    into ``reward_funcs`` or a reward function's name (default 0, the first
    function), or ``"combined"`` for the weighted sum TRL trains on
    (``GRPOConfig.reward_weights``, NaN-skipping like TRL). The rewards are
    turned into (successes, trials) per task by ``reward_mode``: ``"binary"``
    (exactly 0/1), ``"threshold"`` (reward >= ``threshold`` succeeds) or
    ``"fraction"`` (graded rewards in [0, 1]). Settings that cannot work
    (a reward model or a multi-function sum under ``"binary"``, a key column
    missing from the dataset) fail in the constructor; a reward that does not
    fit the mode fails at the first step with a message naming
    ``reward_mode`` and ``threshold``.

    **Reporting.** After TRL has scored a training generation batch (every
    ``steps_per_generation * num_iterations`` steps), each rank reports the
    rewards of its own completions to the selection the batch came from; the
    service applies the step once all ``num_generations`` rollouts of every
    prompt are in. Evaluation batches are not reported.

    **Outages** (``on_outage``, default ``"keep_training"``): see
    `OutcomeReporter` and `BotsBatchSampler`. Each rank spools to
    ``<output_dir>/bots-spool/<run_id>-rank<r>.jsonl``; in a distributed run
    only the main process asks the service for selections and broadcasts
    them, so all ranks always train on the same batch, local or not.

    Args:
        *args: GRPOTrainer's positional arguments.
        bots_client: Connected client.
        bots_pool: Pool name.
        run_id: Run id, the same on every rank (e.g. the output dir's name).
        key_column: Dataset column holding the task key.
        reward_mode: ``"binary"``, ``"threshold"`` or ``"fraction"``.
        threshold: Success threshold for ``"threshold"``.
        report_reward: Index or name of the reported reward function, or ``"combined"``.
        on_outage: ``"keep_training"`` or ``"fail_fast"``.
        probe_interval: Seconds between attempts to reach the service during an outage.
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
        report_reward: int | str = 0,
        on_outage: str = KEEP_TRAINING,
        probe_interval: float = 10.0,
        reporter_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            mode = RewardMode(reward_mode)
        except ValueError:
            raise ValueError(
                f"reward_mode must be 'binary', 'threshold' or 'fraction', got {reward_mode!r}"
            ) from None
        self.bots_client = bots_client
        self.bots_pool = bots_pool
        self.bots_run_id = run_id
        self.bots_key_column = key_column
        self.bots_on_outage = check_outage_policy(on_outage)
        self.bots_probe_interval = probe_interval
        self.bots_ledger = SelectionLedger()
        self.bots_session = uuid.uuid4().hex[:8]
        self.bots_reported = 0
        self.bots_skipped = 0
        self.bots_sampler: BotsRepeatSampler | None = None
        reward_funcs = args[1] if len(args) >= 2 else kwargs.get("reward_funcs")
        if reward_funcs is None:
            raise TypeError("reward_funcs is required")
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.bots_report_column = _reward_column(funcs, report_reward)
        _check_mode(funcs, self.bots_report_column, mode)
        train = kwargs.get("train_dataset", args[3] if len(args) >= 4 else None)
        names = getattr(train, "column_names", None)
        if names is not None and key_column not in names:
            raise KeyError(
                f"the training dataset has no {key_column!r} column (its columns: {names}); "
                "add each row's task key or pass key_column="
            )
        super().__init__(*args, **kwargs)
        if self.args.remove_unused_columns:
            raise ValueError(
                f"remove_unused_columns=True would drop the {key_column!r} column BOTS needs; "
                "use GRPOConfig(remove_unused_columns=False) (its default)"
            )
        rank = self.accelerator.process_index
        opts: dict[str, Any] = {
            "mode": mode,
            "threshold": threshold,
            "request_id_prefix": f"{run_id}-",
            "on_outage": on_outage,
            "probe_interval": probe_interval,
            "spool_path": os.path.join(
                self.args.output_dir, "bots-spool", f"{run_id}-rank{rank}.jsonl"
            ),
        }
        opts.update(reporter_kwargs or {})
        self.bots_reporter = OutcomeReporter(bots_client, bots_pool, **opts)

    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        if dataset is None:
            dataset = self.train_dataset
        if self.bots_key_column not in dataset.column_names:
            raise KeyError(f"the training dataset has no {self.bots_key_column!r} column")
        keys = [str(k) for k in dataset[self.bots_key_column]]
        distributed = self.accelerator.num_processes > 1
        self.bots_sampler = BotsRepeatSampler(
            self.bots_client,
            self.bots_pool,
            keys,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            run_id=self.bots_run_id,
            ledger=self.bots_ledger,
            on_outage=self.bots_on_outage,
            reporter=self.bots_reporter,
            probe_interval=self.bots_probe_interval,
            share=_broadcast_from_main if distributed else None,
            leader=self.accelerator.is_main_process,
        )
        return self.bots_sampler

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> torch.Tensor:
        table = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:  # evaluation batches are no selections
            self._bots_report(inputs, table, len(prompts))
        return table

    def _bots_report(
        self, inputs: Sequence[Mapping[str, Any]], table: torch.Tensor, n: int
    ) -> None:
        # TRL gathers the reward table over ranks; this rank's rows are its own completions.
        start = self.accelerator.process_index * n
        local = table[start : start + n].detach().float().cpu()
        if self.bots_report_column == COMBINED:
            weights = self.reward_weights.to(local.device).unsqueeze(0)
            values = (local * weights).nansum(dim=1)
            values[torch.isnan(local).all(dim=1)] = math.nan
            source = "the combined reward (weighted sum of reward_funcs)"
        else:
            assert isinstance(self.bots_report_column, int)
            values = local[:, self.bots_report_column]
            source = f"reward function {self.reward_func_names[self.bots_report_column]!r}"
        keys = [str(row[self.bots_key_column]) for row in inputs]
        found = self.bots_ledger.take(keys)
        if found is None:
            self.bots_skipped += 1
            log.warning("a training batch of %d rollouts fits no pending selection", len(keys))
            return
        step, sel = found
        if _report_share(
            self.bots_reporter,
            keys,
            values.tolist(),
            step,
            sel,
            self.accelerator.process_index,
            self.bots_session,
            source,
        ):
            self.bots_reported += 1

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """GRPOTrainer.train, then waits until every report was delivered or spooled."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.bots_reporter.flush()

    def close_bots(self) -> None:
        """Flushes the reporter, replays its spool once and stops it (call once training is over)."""
        self.bots_reporter.close()


def _broadcast_from_main(selection: Selection | None) -> Selection:
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [selection]
    broadcast_object_list(box, from_process=0)
    return box[0]  # type: ignore[no-any-return]


def _reward_column(funcs: Sequence[Any], report_reward: int | str) -> int | str:
    if report_reward == COMBINED:
        return COMBINED
    if isinstance(report_reward, str):
        names = [getattr(f, "__name__", None) or str(f) for f in funcs]
        if report_reward not in names:
            raise ValueError(
                f"report_reward={report_reward!r} names no reward function (they are {names}); "
                f"pass an index, a name or {COMBINED!r}"
            )
        return names.index(report_reward)
    if not 0 <= report_reward < len(funcs):
        raise ValueError(
            f"report_reward={report_reward} is out of range for {len(funcs)} reward function(s)"
        )
    return int(report_reward)


def _check_mode(funcs: Sequence[Any], column: int | str, mode: RewardMode) -> None:
    """Rejects before training what cannot give 0/1 rewards under ``reward_mode='binary'``."""
    if mode is not RewardMode.BINARY:
        return
    if column == COMBINED and len(funcs) > 1:
        raise ValueError(
            f"report_reward='combined' sums {len(funcs)} reward functions, which is not a 0/1 "
            "reward as reward_mode='binary' requires: pass reward_mode='threshold' with a "
            "threshold (a combined reward >= threshold is a success), or report one function"
        )
    chosen = funcs[0] if column == COMBINED else funcs[int(column)]
    if isinstance(chosen, (str, torch.nn.Module)):
        raise ValueError(
            "the reported reward comes from a reward model (scores, not 0/1), which "
            "reward_mode='binary' cannot use: pass reward_mode='threshold' with a threshold"
        )
