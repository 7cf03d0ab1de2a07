"""A real TRL GRPOTrainer keeps training while `bots serve` is killed (-9) and restarted."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bots_adapters.trl import BotsGRPOTrainer
from bots_client import SelectorClient
from datasets import Dataset
from outage_helpers import (
    FAST_RECONNECT,
    SUMS,
    applied_totals,
    assert_same_totals,
    server_process,
    totals,
)
from service_procs import ServerProcess
from tiny_trl import char_tokenizer, contains_digit, grpo_args, rows, tiny_model
from transformers import TrainerCallback

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from server_process(tmp_path)


class Outage(TrainerCallback):  # type: ignore[misc]
    """kill -9 the server after step ``down``; start it again (same data dir) after ``up``."""

    def __init__(self, server: ServerProcess, down: int, up: int) -> None:
        self.server, self.down, self.up = server, down, up

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(0.25)  # a step long enough for the sampler to notice the service is back
        if state.global_step == self.down:
            self.server.kill()
        if state.global_step == self.up:
            self.server.start()


@pytest.mark.timeout(180)
def test_grpo_trainer_survives_a_killed_server_and_applies_its_evidence_once(
    served: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bots_adapters")
    data = rows(10)
    steps = 9
    with SelectorClient(served.address, timeout=1, retries=1, options=FAST_RECONNECT) as client:
        client.create_pool("trl-out", [r["task_key"] for r in data], config=SUMS)
        tokenizer = char_tokenizer()
        trainer = BotsGRPOTrainer(
            model=tiny_model(tokenizer),
            reward_funcs=[contains_digit],
            args=grpo_args(tmp_path / "out", steps, num_generations=4),
            train_dataset=Dataset.from_list(data),
            processing_class=tokenizer,
            bots_client=client,
            bots_pool="trl-out",
            run_id="trl-outage",
            probe_interval=0.3,
            reporter_kwargs={"max_attempts": 2, "backoff": 0.05, "outage_after": 2},
            callbacks=[Outage(served, down=2, up=6)],
        )
        trainer.train()
        trainer.bots_reporter.close(timeout=60)

        stats = trainer.bots_reporter.stats
        delivered = trainer.bots_reporter.delivered
        sampler = trainer.bots_sampler
        assert sampler is not None
        assert trainer.state.global_step == steps
        # Every step's evidence arrived exactly once: 2 prompts x 4 completions per step.
        assert stats.enqueued == steps and stats.failed == 0
        assert len({d.request_id for d in delivered}) == len(delivered) == steps
        assert sum(o.trials for d in delivered for o in d.outcomes) == steps * 8
        assert stats.degraded_batches == sampler.batches.degraded_batches >= 2
        assert stats.degraded_batches < steps  # back to BOTS selections after the restart
        assert stats.outages == 1 and stats.spooled >= 2 and stats.replayed == stats.spooled
        # The service's posteriors hold exactly that evidence: nothing lost, nothing twice.
        want = totals(o for d in delivered for o in d.outcomes)
        assert_same_totals(applied_totals(client, "trl-out"), want)
        assert list((tmp_path / "out" / "bots-spool").glob("*.jsonl"))
    assert "sampler entering degraded mode" in caplog.text
    assert "sampler leaving degraded mode" in caplog.text
    assert "reporter leaving degraded mode" in caplog.text
    print(
        f"trl outage: {stats.degraded_batches} local batches, {stats.spooled} spooled, "
        f"{stats.replayed} replayed, {stats.late} late, {stats.duplicates} duplicates"
    )
