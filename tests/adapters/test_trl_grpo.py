"""A real TRL GRPOTrainer on CPU selects its prompts through BOTS and reports outcomes to a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bots_adapters.trl import BotsGRPOTrainer, BotsRepeatSampler
from bots_client import PoolConfig, SelectionState, SelectorClient
from datasets import Dataset
from outage_helpers import applied_totals, totals
from tiny_trl import char_tokenizer, contains_digit, grpo_args, rows, tiny_model
from transformers import TrainerCallback

pytestmark = [
    # TRL marks parts of its API experimental and transformers warns about CPU-only
    # settings; neither is ours to fix.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# Plain evidence sums: alpha = 1 + successes, beta = 1 + failures, whatever the order or steps.
SUMS = PoolConfig(forgetting=0.0, implicit_weight=0.0)


def make_trainer(
    client: SelectorClient, pool: str, out: Path, steps: int, data: list[dict[str, str]], **kw: Any
) -> BotsGRPOTrainer:
    tokenizer = char_tokenizer()
    args = kw.pop("args", None) or grpo_args(out, steps, **kw.pop("config", {}))
    return BotsGRPOTrainer(
        model=tiny_model(tokenizer),
        reward_funcs=kw.pop("reward_funcs", [contains_digit]),
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
        bots_client=client,
        bots_pool=pool,
        run_id=kw.pop("run_id", "trl-test"),
        **kw,
    )


def evidence_totals(reports: Any) -> dict[str, tuple[float, float]]:
    """Per task (successes, trials) summed over delivered reports."""
    return totals(o for rep in reports for o in rep.outcomes)


def assert_same_totals(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


@pytest.mark.timeout(300)
def test_trl_default_layout_closes_every_selection_once_even_when_a_task_repeats(
    client: SelectorClient, tmp_path: Path
) -> None:
    """TRL's defaults (8 per device, 8 generations): one prompt per selection, tasks repeat."""
    data = rows(3)  # 3 tasks, 8 steps: BOTS must select some task again
    client.create_pool("trl", [r["task_key"] for r in data], config=SUMS)
    trainer = make_trainer(client, "trl", tmp_path / "out", 8, data)
    assert trainer.args.per_device_train_batch_size == 8 and trainer.num_generations == 8
    trainer.train()
    trainer.close_bots()

    assert isinstance(trainer.bots_sampler, BotsRepeatSampler)
    stats = trainer.bots_reporter.stats
    delivered = trainer.bots_reporter.delivered
    assert trainer.state.global_step == 8 and trainer.bots_reported == 8
    assert stats.delivered == 8 and stats.failed == stats.late == stats.spooled == 0
    assert [d.result.selection_state for d in delivered if d.result] == [SelectionState.APPLIED] * 8
    assert len({d.selection_id for d in delivered}) == 8
    keys = [d.outcomes[0].task_key for d in delivered]
    assert len(set(keys)) < len(keys)  # the same task was selected again, and still matched
    assert all(len(d.outcomes) == 1 and d.outcomes[0].trials == 8 for d in delivered)
    info = client.get_pool("trl")
    assert info.steps_applied == trainer.state.global_step
    assert info.selections_expired == 0
    assert_same_totals(applied_totals(client, "trl"), evidence_totals(delivered))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("config", "steps", "selections", "prompts"),
    [
        ({"gradient_accumulation_steps": 2, "num_generations": 4}, 3, 3, 4),
        ({"num_iterations": 2, "num_generations": 4}, 4, 2, 2),
    ],
    ids=["grad-accum-2", "num-iterations-2"],
)
def test_trl_gradient_accumulation_and_reused_generations_report_once_per_selection(
    client: SelectorClient,
    tmp_path: Path,
    config: dict[str, int],
    steps: int,
    selections: int,
    prompts: int,
) -> None:
    data = rows(12)
    client.create_pool("acc", [r["task_key"] for r in data], config=SUMS)
    trainer = make_trainer(client, "acc", tmp_path / "out", steps, data, config=config)
    trainer.train()
    trainer.close_bots()
    delivered = trainer.bots_reporter.delivered
    assert trainer.state.global_step == steps
    assert [d.result.selection_state for d in delivered if d.result] == [
        SelectionState.APPLIED
    ] * selections
    assert all(
        len(d.outcomes) == prompts and {o.trials for o in d.outcomes} == {4.0} for d in delivered
    )
    info = client.get_pool("acc")
    assert info.steps_applied == selections and info.selections_expired == 0


def plus_minus_one(completions: list[str], **kwargs: object) -> list[float]:
    return [1.0 if "1" in c else -1.0 for c in completions]


def always_one(completions: list[str], **kwargs: object) -> list[float]:
    return [1.0] * len(completions)


def always_zero(completions: list[str], **kwargs: object) -> list[float]:
    return [0.0] * len(completions)


@pytest.mark.timeout(300)
def test_rewards_outside_0_1_fail_at_once_with_a_message_naming_the_option(
    client: SelectorClient, tmp_path: Path
) -> None:
    data = rows(8)
    client.create_pool("pm", [r["task_key"] for r in data], config=SUMS)
    cfg = {"num_generations": 4}
    with pytest.raises(ValueError, match=r"report_reward='combined'.*reward_mode='threshold'"):
        make_trainer(
            client, "pm", tmp_path / "a", 1, data, config=cfg,
            reward_funcs=[always_one, always_zero], report_reward="combined",
        )  # fmt: skip
    bad = make_trainer(
        client, "pm", tmp_path / "b", 2, data, config=cfg, reward_funcs=[plus_minus_one]
    )
    with pytest.raises(ValueError, match=r"plus_minus_one.*reward_mode='threshold' with threshold"):
        bad.train()
    bad.close_bots()
    good = make_trainer(
        client, "pm", tmp_path / "c", 2, data, config=cfg, run_id="pm-ok",
        reward_funcs=[plus_minus_one], reward_mode="threshold", threshold=0.0,
    )  # fmt: skip
    good.train()
    good.close_bots()
    assert good.bots_reporter.stats.delivered == 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("report", "successes"), [("combined", 4.0), (1, 0.0), ("always_one", 4.0)]
)
def test_the_reported_reward_is_one_function_or_the_weighted_sum(
    client: SelectorClient, tmp_path: Path, report: int | str, successes: float
) -> None:
    data = rows(8)
    client.create_pool("mix", [r["task_key"] for r in data], config=SUMS)
    trainer = make_trainer(
        client, "mix", tmp_path / "o", 1, data,
        config={"num_generations": 4, "reward_weights": [0.6, 0.5]},
        reward_funcs=[always_one, always_zero], report_reward=report,
        reward_mode="threshold", threshold=0.6,
    )  # fmt: skip
    trainer.train()
    trainer.close_bots()
    (done,) = trainer.bots_reporter.delivered
    assert {o.successes for o in done.outcomes} == {successes}


class Slow(TrainerCallback):  # type: ignore[misc]
    """Makes each step take longer than the pool's wait window."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


@pytest.fixture
def quick_expiry_client(tmp_path: Path) -> Iterator[SelectorClient]:
    """A server that checks for expired selections every 0.1 s, and a client of it."""
    from bots_server._app import start_server
    from bots_server._settings import ServerSettings

    server = start_server(
        ServerSettings(
            host="127.0.0.1",
            port=0,
            data_dir=str(tmp_path / "d"),
            fsync=False,
            metrics_port=-1,
            expiry_interval_seconds=0.1,
        )
    )
    try:
        with SelectorClient(str(server.address), timeout=10) as c:
            yield c
    finally:
        server.stop(grace=0)


@pytest.mark.timeout(300)
def test_steps_slower_than_the_wait_window_still_apply_all_their_evidence(
    quick_expiry_client: SelectorClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = quick_expiry_client
    data = rows(8)
    client.create_pool(
        "slow",
        [r["task_key"] for r in data],
        config=PoolConfig(forgetting=0.0, implicit_weight=0.0, selection_wait_seconds=1.0),
    )
    trainer = make_trainer(
        client,
        "slow",
        tmp_path / "o",
        4,
        data,
        config={"num_generations": 4},
        callbacks=[Slow(1.3)],
    )
    trainer.train()
    trainer.close_bots()
    stats = trainer.bots_reporter.stats
    assert stats.failed == 0 and stats.delivered == 4
    # The first selections (drawn before any step time was seen) expire; once the sampler
    # has seen a step, it asks for a longer wait and the later ones keep their evidence.
    info = client.get_pool("slow")
    assert 1 <= stats.late <= 2 and 1 <= info.selections_expired <= 2, (stats, info)
    assert "ask for a wait" in caplog.text
    assert_same_totals(
        applied_totals(client, "slow"), evidence_totals(trainer.bots_reporter.delivered)
    )
    assert "selection_wait_seconds" in caplog.text


WORKER = Path(__file__).with_name("trl_rank_worker.py")


@pytest.mark.timeout(300)
def test_two_processes_train_on_the_same_selections_and_each_closes_once(
    client: SelectorClient, bots_target: str, tmp_path: Path
) -> None:
    """Two real ranks (torch.distributed, gloo on CPU) under TRL's default layout."""
    from service_procs import free_port

    data = rows(6)
    client.create_pool("ddp", [r["task_key"] for r in data], config=SUMS)
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    procs = []
    for rank in range(2):
        renv = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, str(WORKER), bots_target, "ddp", str(tmp_path), "4"]
        procs.append(
            subprocess.Popen(cmd, env=renv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Every rank drew the same selections (only rank 0 asked the service) ...
    assert results[0]["draws"] == results[1]["draws"]
    assert results[0]["global_step"] == results[1]["global_step"] == 4
    # ... and reported its own share: 8 prompts x 8 generations per step over 2 ranks.
    per_selection: dict[str, list[str]] = {}
    for res in results:
        assert res["stats"]["failed"] == 0 and res["stats"]["late"] == 0
        for rep in res["reports"]:
            per_selection.setdefault(rep["selection_id"], []).append(rep["state"])
    assert len(per_selection) == 4
    for states in per_selection.values():
        assert sorted(states) == ["applied", "open"]  # closed once, by the second share
    info = client.get_pool("ddp")
    assert info.steps_applied == 4 and info.selections_expired == 0
