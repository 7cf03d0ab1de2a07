"""OutcomeReporter and reward grouping against a real server (no framework needed)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from bots_adapters import (
    OutcomeReporter,
    ReportFailedError,
    ReportQueueFull,
    RewardMode,
    effective_task_ratio,
    group_by_task,
    group_rewards,
)
from bots_client import Outcome, SelectionState, SelectorClient


def test_binary_rewards_group_by_task_in_first_seen_order() -> None:
    keys = ["b", "a", "b", "a", "b", "c"]
    out = group_rewards(keys, [1, 0, 1, 1, 0, 0])
    assert out == [Outcome("b", 2, 3), Outcome("a", 1, 2), Outcome("c", 0, 1)]
    assert effective_task_ratio(out) == pytest.approx(2 / 3)


def test_graded_rewards_by_threshold_or_as_fractions() -> None:
    keys = ["t"] * 4
    rewards = [0.2, 0.5, 0.9, 1.0]
    assert group_rewards(keys, rewards, mode="threshold", threshold=0.5) == [Outcome("t", 3, 4)]
    (frac,) = group_rewards(keys, rewards, mode=RewardMode.FRACTION)
    assert frac.successes == pytest.approx(2.6) and frac.trials == 4
    assert group_by_task([("t", rewards)], mode="fraction") == [frac]


def test_unscored_rollouts_are_skipped_not_failures() -> None:
    assert group_rewards(["a", "a", "b"], [1.0, math.nan, None]) == [Outcome("a", 1, 1)]  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("mode", "reward", "match"),
    [
        ("binary", 0.5, "0 or 1"),
        ("fraction", 1.5, r"\[0, 1\]"),
        ("binary", math.inf, "finite"),
        ("nope", 1.0, "reward mode"),
    ],
)
def test_invalid_rewards_are_rejected(mode: str, reward: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_rewards(["a"], [reward], mode=mode)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="2 task keys but 1 rewards"):
        group_rewards(["a", "b"], [1.0])


def test_reports_are_sent_in_the_background_and_close_flushes(client: SelectorClient) -> None:
    client.create_pool("r", [f"k{i}" for i in range(8)], preset="bots")
    sel = client.select_batch("r", 4, run_id="run", step=0, expected_trials=2)
    reporter = OutcomeReporter(client, "r")
    half = [k for k in sel.keys for _ in range(2)]
    rid = reporter.report_rewards(half[:4], [1, 0, 1, 1], selection_id=sel.selection_id)
    reporter.report_rewards(half[4:], [0, 0, 1, 1], selection_id=sel.selection_id)
    reporter.close()
    assert reporter.stats.delivered == 2 and reporter.stats.failed == 0
    first, second = reporter.delivered
    assert first.request_id == rid
    assert first.result and first.result.selection_state is SelectionState.OPEN
    assert second.result and second.result.selection_state is SelectionState.APPLIED
    assert client.get_pool("r").steps_applied == 1
    with pytest.raises(RuntimeError, match="closed"):
        reporter.report([("k0", 1, 1)])


def test_an_outage_is_retried_with_the_same_request_id_and_applied_once(tmp_path: Path) -> None:
    """The server is down when the report is queued and comes up later on the same port."""
    from bots_server._app import start_server
    from bots_server._settings import ServerSettings
    from service_procs import free_port

    port = free_port()
    extra = {"metrics_port": -1} if "metrics_port" in ServerSettings.__dataclass_fields__ else {}
    settings = ServerSettings(
        host="127.0.0.1", port=port, data_dir=str(tmp_path / "d"), fsync=False, **extra
    )
    server = start_server(settings)
    with SelectorClient(f"127.0.0.1:{port}", timeout=1, retries=0) as client:
        client.create_pool("o", ["a", "b"], preset="bots")
        server.stop(grace=0)
        reporter = OutcomeReporter(client, "o", backoff=0.05, max_backoff=0.2, max_attempts=0)
        rid = reporter.report([("a", 1, 2)])
        time.sleep(0.6)
        assert reporter.pending == 1 and reporter.stats.retries >= 1
        server = start_server(settings)
        try:
            reporter.close(timeout=30)
            (done,) = reporter.delivered
            assert done.request_id == rid and done.attempts >= 2
            assert done.result is not None and not done.result.duplicate
            assert client.get_pool("o").steps_applied == 1
            # Sending the same request id again is recognised as a duplicate.
            again = client.report_outcomes("o", [("a", 1, 2)], request_id=rid)
            assert again.duplicate and client.get_pool("o").steps_applied == 1
        finally:
            server.stop(grace=0)


def test_fail_fast_a_full_queue_raises_instead_of_dropping(refused_target: str) -> None:
    with SelectorClient(refused_target, timeout=0.2, retries=0) as client:
        reporter = OutcomeReporter(
            client,
            "p",
            max_pending=1,
            block=False,
            backoff=5,
            max_attempts=0,
            on_outage="fail_fast",
        )
        reporter.report([("a", 1, 1)])  # taken by the thread, stuck retrying
        deadline = time.monotonic() + 5
        while reporter.stats.retries == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        reporter.report([("b", 1, 1)])  # fills the queue
        with pytest.raises(ReportQueueFull):
            reporter.report([("c", 1, 1)])
        with pytest.raises(ReportFailedError) as err:
            reporter.close(timeout=0.1)
        assert {f.outcomes[0].task_key for f in err.value.failed} == {"a", "b"}


def test_a_full_queue_blocks_until_there_is_room(client: SelectorClient) -> None:
    client.create_pool("b", ["a"], preset="bots")
    reporter = OutcomeReporter(client, "b", max_pending=1)
    threads = [threading.Thread(target=reporter.report, args=([("a", 1, 1)],)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    reporter.close()
    assert reporter.stats.delivered == 5
    assert client.get_pool("b").steps_applied == 5


def test_an_undeliverable_report_is_raised_not_dropped(client: SelectorClient) -> None:
    client.create_pool("u", ["a"], preset="bots")
    reporter = OutcomeReporter(client, "u")
    reporter.report([("no-such-task", 1, 1)])
    with pytest.raises(ReportFailedError, match=r"1 report\(s\)") as err:
        reporter.flush(timeout=10)
    assert err.value.failed[0].outcomes[0].task_key == "no-such-task"
    assert reporter.failed == err.value.failed
    reporter.close()  # already raised once: not again


@pytest.mark.parametrize("on_closed", ["warn", "standalone", "raise"])
def test_reports_for_a_closed_selection_follow_on_closed(
    client: SelectorClient, on_closed: str
) -> None:
    client.create_pool("late", ["a", "b"], preset="bots")
    sel = client.select_batch("late", 2, run_id="r", step=0)
    client.report_outcomes("late", [("a", 1, 1)], selection_id=sel.selection_id, final=True)
    reporter = OutcomeReporter(client, "late", on_closed=on_closed)
    reporter.report([("b", 1, 1)], selection_id=sel.selection_id)
    if on_closed == "raise":
        with pytest.raises(ReportFailedError):
            reporter.close()
    else:
        reporter.close()
    assert reporter.stats.late == 1
    applied = client.get_pool("late").steps_applied
    assert applied == (2 if on_closed == "standalone" else 1)


@pytest.fixture
def refused_target() -> str:
    from service_procs import free_port

    return f"127.0.0.1:{free_port()}"


def test_the_package_imports_no_framework_and_exports_a_sorted_all() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bots_adapters, bots_adapters.vllm, bots_adapters.trinity;"
        "heavy = [m for m in ('torch', 'trl', 'transformers', 'verl', 'vllm', 'trinity')"
        " if m in sys.modules];"
        "assert not heavy, heavy;"
        "assert bots_adapters.__all__ == sorted(bots_adapters.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_reports_spooled_while_the_service_is_down_are_replayed_once_by_the_next_reporter(
    client: SelectorClient, refused_target: str, tmp_path: Path
) -> None:
    """A run ends during an outage; the next reporter on its spool replays what was left."""
    from bots_client import PoolConfig

    client.create_pool(
        "sp", ["a", "b", "c"], config=PoolConfig(forgetting=0.0, implicit_weight=0.0)
    )
    sel = client.select_batch("sp", 2, run_id="r", step=0, expected_trials=2)
    closed = client.select_batch("sp", 2, run_id="r", step=1, expected_trials=2)
    client.report_outcomes(
        "sp", [(closed.keys[0], 1, 2)], selection_id=closed.selection_id, final=True
    )
    # Applied before the outage, its answer lost: the spool still holds it.
    client.report_outcomes("sp", [("c", 2, 2)], request_id="r-applied")
    spool = tmp_path / "spool.jsonl"
    with SelectorClient(refused_target, timeout=0.3, retries=0) as down:
        first = OutcomeReporter(
            down, "sp", spool_path=spool, max_attempts=1, probe_interval=0.1, outage_after=0.1
        )
        first.report(
            [(k, 1, 2) for k in sel.keys], selection_id=sel.selection_id, request_id="r-s0"
        )
        first.report([(closed.keys[1], 1, 2)], selection_id=closed.selection_id, request_id="r-s1")
        first.report([("c", 2, 2)], request_id="r-applied")
        first.close()
        assert first.degraded and first.stats.spooled == 3 and first.stats.failed == 0
    assert len(spool.read_text().splitlines()) == 3
    before = client.get_pool("sp").steps_applied

    second = OutcomeReporter(client, "sp", spool_path=spool, probe_interval=0.1)
    assert second.spooled == 3
    second.close(timeout=10)
    s = second.stats
    assert s.replayed == 3 and s.duplicates == 1 and s.late == 1 and second.spooled == 0
    results = {d.request_id: d.result for d in second.delivered}
    assert results["r-s0"] is not None and results["r-s0"].selection_state is SelectionState.APPLIED
    assert results["r-applied"] is not None and results["r-applied"].duplicate
    # s0 closed its selection, s1 became a standalone step, the duplicate changed nothing.
    assert client.get_pool("sp").steps_applied == before + 2
    # A replay repeated after a crash (the spool written again) applies nothing twice.
    from bots_adapters import ReportSpool, SpooledReport

    again = ReportSpool(spool)
    again.add(SpooledReport("r-s1", (Outcome(closed.keys[1], 1, 2),), closed.selection_id, False))
    third = OutcomeReporter(client, "sp", spool_path=spool)
    third.close(timeout=10)
    assert third.stats.replayed == 1 and third.stats.duplicates == 1
    assert client.get_pool("sp").steps_applied == before + 2


def test_a_spent_spool_budget_is_a_clear_error(refused_target: str, tmp_path: Path) -> None:
    from bots_adapters import SpoolFullError

    with SelectorClient(refused_target, timeout=0.2, retries=0) as down:
        reporter = OutcomeReporter(
            down, "p", spool_path=tmp_path / "s.jsonl", spool_max_bytes=1024,
            max_pending=1, max_attempts=1, outage_after=0.1,
        )  # fmt: skip
        with pytest.raises((ReportFailedError, SpoolFullError), match="spool_max_bytes"):
            for i in range(200):
                reporter.report([(f"task-{i}", 1, 1)])
                time.sleep(0.005)
        assert reporter.stats.spooled >= 5
        reporter.close()  # the service is still down: the spooled reports stay in the file
        assert reporter.spooled == reporter.stats.spooled
