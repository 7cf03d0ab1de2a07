"""A torch DataLoader training loop keeps going while `bots serve` is killed (-9) and restarted."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bots_adapters.torch import BotsBatchSampler, OutcomeReporter, is_local, local_selection
from bots_client import Outcome, SelectorClient, UnavailableError
from outage_helpers import (
    FAST_RECONNECT,
    SUMS,
    applied_totals,
    assert_same_totals,
    server_process,
    totals,
)
from service_procs import ServerProcess
from torch.utils.data import DataLoader


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from server_process(tmp_path)


def coin(*parts: object) -> float:
    """A deterministic 0/1 reward."""
    return float(hashlib.sha256(repr(parts).encode()).digest()[0] & 1)


@pytest.mark.timeout(120)
def test_training_loop_survives_a_killed_server_and_its_evidence_is_applied_once(
    served: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bots_adapters")
    keys = [f"t{i}" for i in range(20)]
    steps, kill_at, restart_at = 12, 3, 8
    with SelectorClient(served.address, timeout=1, retries=1, options=FAST_RECONNECT) as client:
        client.create_pool("loop", keys, config=SUMS)
        reporter = OutcomeReporter(
            client, "loop", spool_path=tmp_path / "spool.jsonl", probe_interval=0.3,
            max_attempts=2, backoff=0.05, outage_after=2,
        )  # fmt: skip
        sampler = BotsBatchSampler(
            client, "loop", keys, 4, run_id="loop-run", expected_trials=4,
            steps_per_epoch=steps, reporter=reporter, probe_interval=0.3,
        )  # fmt: skip
        loader = DataLoader(keys, batch_sampler=sampler, collate_fn=list)
        produced: list[Outcome] = []
        local_steps = []
        for i, batch in enumerate(loader):
            sel = sampler.current_selection
            assert sel is not None and list(sel.keys) == batch
            if is_local(sel):
                local_steps.append(i)
            rollout_keys = [k for k in batch for _ in range(4)]
            rewards = [coin(i, k, j) for j, k in enumerate(rollout_keys)]
            rid = reporter.report_rewards(
                rollout_keys, rewards, selection_id=sel.selection_id, request_id=f"loop-s{i}"
            )
            assert rid == f"loop-s{i}"
            produced += [
                Outcome(k, sum(rewards[4 * n : 4 * n + 4]), 4) for n, k in enumerate(batch)
            ]
            if i == kill_at:
                served.kill()
            if i == restart_at:
                served.start()
            time.sleep(0.2)  # the "training step"
        reporter.close(timeout=60)

        stats = reporter.stats
        assert len(produced) == steps * 4
        assert local_steps and local_steps[0] == kill_at + 1  # the first draw after the kill
        assert stats.degraded_batches == sampler.degraded_batches == len(local_steps)
        assert stats.outages == 1 and stats.spooled >= 1
        assert stats.replayed == stats.spooled and reporter.spooled == 0
        assert stats.failed == 0 and stats.enqueued == steps
        assert_same_totals(applied_totals(client, "loop"), totals(produced))
        info = client.get_pool("loop")
        # Server selections close with their one report; local batches are standalone steps.
        assert info.steps_applied == steps
        assert not (tmp_path / "spool.jsonl").read_text().strip()
    text = caplog.text
    assert "sampler entering degraded mode" in text and "sampler leaving degraded mode" in text
    assert "reporter entering degraded mode" in text and "reporter leaving degraded mode" in text
    print(
        f"outage: {len(local_steps)} local batches, {stats.spooled} spooled, "
        f"{stats.replayed} replayed, {stats.duplicates} duplicates, steps_applied {info.steps_applied}"
    )


def test_local_batches_are_the_same_for_every_rank_and_step(client: SelectorClient) -> None:
    keys = [f"k{i}" for i in range(50)]
    a = local_selection(keys, 8, run_id="r", step=3, expected_trials=4)
    b = local_selection(list(reversed(keys)), 8, run_id="r", step=3, expected_trials=4)
    assert a == b and len(set(a.keys)) == 8 and is_local(a)
    assert local_selection(keys, 8, run_id="r", step=4, expected_trials=4).keys != a.keys


def test_fail_fast_raises_out_of_the_loader(tmp_path: Path) -> None:
    from service_procs import free_port

    with SelectorClient(f"127.0.0.1:{free_port()}", timeout=0.5, retries=0) as client:
        sampler = BotsBatchSampler(client, "p", ["a", "b"], 1, run_id="r", on_outage="fail_fast")
        with pytest.raises(UnavailableError):
            next(iter(DataLoader(["a", "b"], batch_sampler=sampler)))
