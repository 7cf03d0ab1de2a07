"""verl: a real RayPPOTrainer built on CPU with BOTS selection; reporting from a real DataProto.

Runs in its own venv (verl pins another transformers than TRL; see
``.ci/adapters.sh``). What runs: verl's config (hydra compose of
ppo_trainer.yaml), RayPPOTrainer.__init__ including its StatefulDataLoader
built around our sampler, that loader's checkpoint state and resume, and our
per-step report from a verl DataProto. What does not: ``fit()`` — it needs
Ray worker groups with FSDP actors and a rollout engine (vLLM/SGLang), which do
not run on these CPU machines.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

verl = pytest.importorskip("verl")  # only in the verl venv made by .ci/adapters.sh

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bots_client import (  # noqa: E402
    PoolConfig,
    SelectedTask,
    Selection,
    SelectionState,
    SelectorClient,
)
from hydra import compose, initialize_config_dir  # noqa: E402

with warnings.catch_warnings():
    # At import verl uses ray.experimental.state (deprecated by Ray) and warns that its
    # optional torchtitan engine is missing; neither concerns the code under test.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", UserWarning)
    from bots_adapters.verl import BotsRayPPOTrainer, BotsSampler, split_by_selection
    from verl import DataProto
    from verl.trainer.ppo.utils import Role

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

N, B, ROLLOUTS = 24, 4, 3


class Prompts(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Rows shaped like verl's RLHFDataset output (tensors plus extra_info)."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": torch.full((5,), i),
            "extra_info": {"index": i, "task_key": f"task-{i}"},
            "data_source": "toy",
        }


def verl_config() -> Any:
    d = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=d, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                f"data.train_batch_size={B}",
                f"actor_rollout_ref.rollout.n={ROLLOUTS}",
                "data.dataloader_num_workers=0",
                "trainer.device=cpu",
                "trainer.experiment_name=verl-test",
                "algorithm.adv_estimator=grpo",
                "trainer.total_epochs=1",
            ],
        )


def make_trainer(client: SelectorClient) -> BotsRayPPOTrainer:
    return BotsRayPPOTrainer(
        config=verl_config(),
        tokenizer=None,
        role_worker_mapping={Role.ActorRollout: object},
        resource_pool_manager=None,
        train_dataset=Prompts(),
        val_dataset=Prompts(),
        bots_client=client,
        bots_pool="verl",
    )


def step_batch(batch_dict: dict[str, Any], successes: dict[str, int]) -> DataProto:
    """What fit() holds before the actor update: each prompt repeated n times, scores per token."""
    batch = DataProto.from_single_dict(batch_dict).repeat(ROLLOUTS, interleave=True)
    keys = [info["task_key"] for info in batch.non_tensor_batch["extra_info"]]
    seen: dict[str, int] = {}
    scores = torch.zeros(len(keys), 4)
    for row, k in enumerate(keys):
        seen[k] = seen.get(k, 0) + 1
        scores[row, -1] = float(seen[k] <= successes[k])
    batch.batch["token_level_scores"] = scores
    return batch


def test_ppo_trainer_draws_bots_batches_reports_and_resumes(client: SelectorClient) -> None:
    client.create_pool("verl", [f"task-{i}" for i in range(N)], preset="bots")
    trainer = make_trainer(client)
    assert isinstance(trainer.train_dataloader.sampler, BotsSampler)
    assert len(trainer.train_dataloader) == N // B

    it = iter(trainer.train_dataloader)
    for step in range(2):
        batch_dict = next(it)
        keys = [info["task_key"] for info in batch_dict["extra_info"]]
        sel = trainer.bots_sampler.ledger.get(step)
        assert sel is not None and list(sel.keys) == keys
        trainer.bots_report(
            step_batch(batch_dict, {k: i % (ROLLOUTS + 1) for i, k in enumerate(keys)})
        )
    trainer.bots_reporter.flush()
    states = [d.result.selection_state for d in trainer.bots_reporter.delivered if d.result]
    assert states == [SelectionState.APPLIED] * 2
    assert [o.trials for o in trainer.bots_reporter.delivered[0].outcomes] == [ROLLOUTS] * B
    assert client.get_pool("verl").steps_applied == 2

    # verl checkpoints the data loader's state; a new trainer resumes from it.
    state = trainer.train_dataloader.state_dict()
    resumed = make_trainer(client)
    resumed.train_dataloader.load_state_dict(state)
    nxt = next(iter(resumed.train_dataloader))
    assert [s for s, _ in resumed.bots_sampler.ledger.pending()] == [2]
    assert not resumed.bots_sampler.ledger.get(2).replayed
    assert len(nxt["extra_info"]) == B
    assert np.all([isinstance(x, dict) for x in nxt["extra_info"]])


def scored(batch_dict: dict[str, Any], passes: dict[str, int]) -> DataProto:
    """One draw as a DAPO trainer holds it after scoring: a uid per prompt, n rollouts each."""
    batch = step_batch(batch_dict, passes)
    keys = [info["task_key"] for info in batch.non_tensor_batch["extra_info"]]
    batch.non_tensor_batch["uid"] = np.array(
        [f"uid-{k}-{id(batch_dict)}" for k in keys], dtype=object
    )
    return batch


def keep_mixed_groups(batch: DataProto) -> DataProto:
    """DAPO's filter_groups on acc: drop prompts whose rollouts all passed or all failed."""
    scores = batch.batch["token_level_scores"].sum(-1)
    uids = batch.non_tensor_batch["uid"]
    keep = [i for i, u in enumerate(uids) if 0 < scores[uids == u].mean() < 1]
    return batch[keep]


@pytest.mark.parametrize("before_filtering", [True, False], ids=["reported-per-draw", "at-update"])
def test_dapo_dynamic_sampling_reports_every_draw(
    client: SelectorClient, before_filtering: bool
) -> None:
    """Two draws filtered and concatenated into one update batch, as DAPO's fit does."""
    client.create_pool("verl", [f"task-{i}" for i in range(N)], config=PoolConfig(forgetting=0.0))
    trainer = make_trainer(client)
    it = iter(trainer.train_dataloader)
    kept = []
    for _ in range(2):
        batch_dict = next(it)
        keys = [info["task_key"] for info in batch_dict["extra_info"]]
        # task 0 of each draw: all pass; task 1: all fail; the others mixed
        passes = {k: [ROLLOUTS, 0, 1, 2][i % 4] for i, k in enumerate(keys)}
        draw = scored(batch_dict, passes)
        if before_filtering:
            trainer.bots_report(draw)
        kept.append(keep_mixed_groups(draw))
    update = DataProto.concat(kept)
    assert len(update) == 2 * (B - 2) * ROLLOUTS
    trainer.bots_report(update)  # what _update_actor does
    trainer.bots_reporter.close(timeout=10)
    delivered = trainer.bots_reporter.delivered
    states = [d.result.selection_state for d in delivered if d.result]
    assert states == [SelectionState.APPLIED] * 2  # each draw reported once, closed once
    assert len({d.selection_id for d in delivered}) == 2
    tasks_per_report = [len(d.outcomes) for d in delivered]
    # Before filtering every task is evidence, the uniform groups included.
    assert tasks_per_report == ([B, B] if before_filtering else [B - 2, B - 2])
    assert trainer.bots_reporter.stats.failed == 0
    assert client.get_pool("verl").steps_applied == 2


class _Ledger:
    """The part of the sampler's ledger that ``split_by_selection`` reads."""

    def __init__(self, *selections: Selection) -> None:
        self._pending = list(enumerate(selections))

    def pending(self) -> list[tuple[int, Selection]]:
        return self._pending


def _selection(*keys: str) -> Selection:
    tasks = tuple(SelectedTask(k, i, 0.5, 0.5) for i, k in enumerate(keys))
    return Selection(f"sel-{'-'.join(keys)}", tasks, False, 0, 2.0)


@pytest.mark.parametrize("with_uids", [True, False])
def test_split_tells_apart_a_task_two_draws_share_when_the_first_lost_its_rows(
    with_uids: bool,
) -> None:
    # Draws (a, b, c) and (b, x, y); DAPO filtering removed every row of b in
    # the first draw, so the first b row met is the second draw's first row.
    first, second = _selection("a", "b", "c"), _selection("b", "x", "y")
    keys = ["a", "a", "c", "c", "b", "b", "x", "x", "y", "y"]
    uids = [f"{k}{i // 4}" for i, k in enumerate(keys)] if with_uids else None
    segments, left = split_by_selection(_Ledger(first, second), keys, uids)  # type: ignore[arg-type]
    assert left == 0
    assert [(step, rows) for step, _, rows in segments] == [
        (0, [0, 1, 2, 3]),
        (1, list(range(4, 10))),
    ]


def test_split_keeps_a_single_draw_whose_rows_were_reordered() -> None:
    # verl's balance_batch reorders a batch's rows before the update.
    keys = ["c", "c", "a", "a", "b", "b"]
    uids = ["uc", "uc", "ua", "ua", "ub", "ub"]
    segments, left = split_by_selection(_Ledger(_selection("a", "b", "c")), keys, uids)  # type: ignore[arg-type]
    assert left == 0
    assert [(step, rows) for step, _, rows in segments] == [(0, list(range(6)))]
