"""BotsBatchSampler with real DataLoaders (torch and torchdata) against a real server."""

from __future__ import annotations

import pytest
import torch
from bots_adapters.torch import BotsBatchSampler, OutcomeReporter
from bots_client import SelectionState, SelectorClient
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

pytestmark = pytest.mark.filterwarnings(
    # torchdata's StatefulDataLoader calls torch.set_vital, which torch 2.13 deprecates.
    "ignore:'set_vital' is deprecated:UserWarning"
)

N = 40


class Rows(Dataset[dict[str, object]]):
    """Row i holds task key ``task-{N-1-i}``: dataset index and pool index differ on purpose."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"index": i, "key": key_of(i)}


def key_of(i: int) -> str:
    return f"task-{N - 1 - i}"


KEYS = [key_of(i) for i in range(N)]


@pytest.fixture
def pool(client: SelectorClient) -> str:
    client.create_pool("p", [f"task-{i}" for i in range(N)], preset="bots")
    return "p"


def make(client: SelectorClient, pool: str, run_id: str = "run", **kw: object) -> BotsBatchSampler:
    return BotsBatchSampler(
        client, pool, KEYS, 4, run_id=run_id, steps_per_epoch=6, expected_trials=2, **kw
    )  # type: ignore[arg-type]


def collate(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return rows


def test_batches_are_the_selections_mapped_to_dataset_indices(
    client: SelectorClient, pool: str
) -> None:
    sampler = make(client, pool)
    loader = DataLoader(Rows(), batch_sampler=sampler, collate_fn=collate)
    assert len(loader) == len(sampler) == 6
    for step, batch in enumerate(loader):
        sel = sampler.selection(step)
        assert sampler.current_step == step and sampler.current_selection == sel
        assert [r["key"] for r in batch] == list(sel.keys)
        assert len({r["index"] for r in batch}) == 4
    assert client.get_pool(pool).selections_opened == 6


def test_all_ranks_of_a_run_get_identical_batches(client: SelectorClient, pool: str) -> None:
    ranks = [list(make(client, pool, run_id="ddp")) for _ in range(3)]
    assert ranks[0] == ranks[1] == ranks[2]
    assert client.get_pool(pool).selections_opened == 6  # drawn once, replayed for ranks 1, 2
    other = list(make(client, pool, run_id="another-run"))
    assert other != ranks[0]


def test_epochs_continue_the_step_numbers_and_set_epoch_moves_to_an_epoch(
    client: SelectorClient, pool: str
) -> None:
    sampler = make(client, pool)
    first = list(sampler)
    second = list(sampler)
    assert sampler.epoch == 2 and len(sampler.ledger) == 12
    assert [s for s, _ in sampler.ledger.pending()] == list(range(12))
    again = make(client, pool)
    again.set_epoch(1)
    assert list(again) == second and again.epoch == 2
    assert first != second
    again.set_epoch(0)
    assert list(again) == first


def _drain(loader: StatefulDataLoader, n: int | None = None) -> list[list[str]]:
    out = []
    for i, batch in enumerate(loader):
        out.append([r["key"] for r in batch])
        if n is not None and i + 1 == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resume_neither_replays_nor_skips(
    client: SelectorClient, pool: str, workers: int
) -> None:
    # Reference: the uninterrupted run.
    reference = _drain(
        StatefulDataLoader(
            Rows(),
            batch_sampler=make(client, pool, run_id="ref"),
            collate_fn=collate,
            num_workers=workers,
        )
    )
    assert len(reference) == 6

    loader = StatefulDataLoader(
        Rows(),
        batch_sampler=make(client, pool, run_id="crash"),
        collate_fn=collate,
        num_workers=workers,
    )
    before = _drain(loader, 2)
    state = loader.state_dict()
    del loader  # the process dies; a new one restores the checkpoint

    resumed_sampler = make(client, pool, run_id="crash")
    resumed = StatefulDataLoader(
        Rows(), batch_sampler=resumed_sampler, collate_fn=collate, num_workers=workers
    )
    resumed.load_state_dict(state)
    after = _drain(resumed)
    trained = before + after
    # Every step trained exactly once, in order: the same steps 0..5 as the reference run
    # draws from the (shared) posterior, with nothing skipped or repeated.
    assert len(trained) == 6
    crash_steps = [s for s, _ in resumed_sampler.ledger.pending()]
    assert crash_steps[-1] == 5 and 0 not in crash_steps and 1 not in crash_steps
    # No step was drawn twice as a new selection: two runs x 6 steps.
    assert client.get_pool(pool).selections_opened == 12
    for (step, sel), keys in zip(resumed_sampler.ledger.pending()[-4:], after):
        assert list(sel.keys) == keys, step


def test_plain_dataloader_resume_with_the_sampler_state(client: SelectorClient, pool: str) -> None:
    sampler = make(client, pool, run_id="plain")
    it = iter(DataLoader(Rows(), batch_sampler=sampler, collate_fn=collate))
    next(it), next(it), next(it)
    state = sampler.state_dict()
    restored = make(client, pool, run_id="plain")
    restored.load_state_dict(state)
    rest = list(DataLoader(Rows(), batch_sampler=restored, collate_fn=collate))
    assert len(rest) == 3
    assert [s for s, _ in restored.ledger.pending()] == [3, 4, 5]
    assert all(not sel.replayed for _, sel in restored.ledger.pending())
    with pytest.raises(ValueError, match="run_id"):
        make(client, pool, run_id="other").load_state_dict(state)


def test_a_training_loop_reports_every_selection_and_the_posterior_moves(
    client: SelectorClient, pool: str
) -> None:
    """The documented loop: sampler + reporter, 2 rollouts per task, reward 1 for even keys."""
    sampler = make(client, pool, run_id="loop")
    loader = DataLoader(Rows(), batch_sampler=sampler, collate_fn=collate)
    with OutcomeReporter(client, pool) as reporter:
        for batch in loader:
            keys = [str(r["key"]) for r in batch for _ in range(2)]
            rewards = [float(int(k.split("-")[1]) % 2 == 0) for k in keys]
            assert sampler.current_selection is not None
            reporter.report_rewards(
                keys, rewards, selection_id=sampler.current_selection.selection_id
            )
    states = [d.result.selection_state for d in reporter.delivered if d.result]
    assert states == [SelectionState.APPLIED] * 6
    info = client.get_pool(pool)
    assert info.steps_applied == 6
    assert info.last_effective_task_ratio == 0.0  # every task solved 2/2 or 0/2
    posts = {p.task.key: p for _, chunk in client.export_posteriors(pool) for p in chunk}
    seen = {k for d in reporter.delivered for k in (o.task_key for o in d.outcomes)}
    for k in seen:
        assert (posts[k].mean > 0.5) == (int(k.split("-")[1]) % 2 == 0)


def test_selection_for_finds_the_batch_of_a_prefetching_loader(
    client: SelectorClient, pool: str
) -> None:
    sampler = make(client, pool, run_id="prefetch")
    loader = DataLoader(
        Rows(), batch_sampler=sampler, collate_fn=collate, num_workers=2, prefetch_factor=2
    )
    steps = []
    for batch in loader:
        step, sel = sampler.selection_for([str(r["key"]) for r in batch])
        assert list(sel.keys) == [r["key"] for r in batch]
        steps.append(step)
    assert steps == list(range(6))
    assert torch.utils.data.get_worker_info() is None
